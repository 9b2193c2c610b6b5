//! Credentials: App JWTs, installation tokens and their renewal, proxies and CA bundles.

use super::*;

#[tokio::test]
async fn a_jwt_the_app_key_did_not_sign_is_refused() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let mut cfg = env.config("");
    if let devmetrics::sources::github::config::Auth::App { app_id, .. } = &mut cfg.orgs[0].auth {
        *app_id = APP_ID + 1;
    }
    let (store, queue) = env.open().await;
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let results = gh.pollers[0].poll().await;
    assert!(
        results
            .iter()
            .any(|r| matches!(&r.result, Err(e) if e.kind == "auth")),
        "the fake verified the JWT's issuer and signature"
    );
    assert_eq!(env.sim.tokens_issued.load(Ordering::Relaxed), 0);
    assert_eq!(env.sim.counted(), 0);
}

/// Every request, the token exchange included, goes through `proxy_url`: the API host here
/// does not resolve, and the fake answers as the proxy (absolute-form requests).
#[tokio::test]
async fn requests_go_through_the_configured_proxy() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let mut cfg = env.config("");
    cfg.orgs[0].api_base_url = "http://api.github.invalid".into();
    cfg.proxy_url = Some(env.fake.base_url());
    let (store, queue) = env.open().await;
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    poll(&*gh.pollers[0], &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    assert_eq!(
        env.fake
            .requests
            .count("POST /app/installations/{id}/access_tokens"),
        1
    );
}

#[test]
fn a_custom_ca_bundle_is_loaded() {
    let cert = rcgen::generate_simple_self_signed(vec!["ghe.example.com".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let raw: RawGithub = serde_yaml::from_str(&format!(
        "api_base_url: https://ghe.example.com/api/v3\nca_file: {}\norgs: [{{org: a, token: t}}]\n",
        ca.display()
    ))
    .unwrap();
    let cfg = raw.resolve(None).unwrap().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let store = rt
        .block_on(Backend::from_env().open(dir.path(), &RetryPolicy::default()))
        .store;
    let budgets = devmetrics::sources::github::Budgets::default();
    devmetrics::sources::github::Client::new(
        &cfg,
        &cfg.orgs[0],
        store.clone(),
        Arc::new(Telemetry::default()),
        &budgets,
        CancellationToken::new(),
    )
    .expect("the CA bundle is accepted");
    std::fs::write(&ca, "not a certificate").unwrap();
    assert!(
        devmetrics::sources::github::Client::new(
            &cfg,
            &cfg.orgs[0],
            store,
            Arc::new(Telemetry::default()),
            &budgets,
            CancellationToken::new(),
        )
        .is_err()
    );
}

/// The installation token is renewed before it expires (5 minutes ahead), not after a 401.
#[tokio::test]
async fn installation_tokens_are_renewed_before_expiry() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim.knobs.token_ttl.store(301, Ordering::Relaxed);
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    poll(&*gh.pollers[0], &store).await;
    // The token is good for 301 s, i.e. stale for us 1 s after it was issued.
    let first = env.sim.tokens_issued.load(Ordering::Relaxed);
    assert!(first >= 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.advance(60);
    poll(&*gh.pollers[0], &store).await;
    assert!(env.sim.tokens_issued.load(Ordering::Relaxed) > first);
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}

/// A host clock minutes away from GitHub's makes GitHub refuse the App JWT (issued "in the
/// future", or already expired by its clock). The refusal's `Date` gives GitHub's clock;
/// the exchange is tried once more on it, and the cycle is exact.
#[tokio::test]
async fn a_clock_off_from_githubs_is_corrected_from_its_date() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    for skew in [-600, 900, 0] {
        env.sim.knobs.clock_skew_secs.store(skew, Ordering::Relaxed);
        env.sim.revoke_tokens();
        let issued = env.sim.tokens_issued.load(Ordering::Relaxed);
        let refused = env.sim.jwts_refused.load(Ordering::Relaxed);
        env.advance(60);
        poll(&*gh.pollers[0], &store).await;
        assert_eq!(
            env.sim.tokens_issued.load(Ordering::Relaxed),
            issued + 1,
            "GitHub {skew:+}s from us: one new token"
        );
        if skew != 0 {
            assert!(
                env.sim.jwts_refused.load(Ordering::Relaxed) > refused,
                "the first JWT was refused"
            );
        }
        assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    }
}

/// GitHub refuses an App JWT meant to live over ten minutes; ours lives exactly ten.
#[tokio::test]
async fn app_jwts_longer_than_ten_minutes_are_refused() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        devmetrics::sim::github::TEST_APP_KEY_PEM.as_bytes(),
    )
    .unwrap();
    let now = devmetrics::clock::now_secs();
    let url = format!(
        "{}/app/installations/{INSTALLATION_ID}/access_tokens",
        env.fake.base_url()
    );
    let exchange = |jwt: String| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .header("authorization", format!("Bearer {jwt}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let long = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({"iat": now - 60, "exp": now + 641, "iss": APP_ID.to_string()}),
        &key,
    )
    .unwrap();
    assert_eq!(exchange(long).await, 401);
    let ours = devmetrics::sources::github::client::app_jwt(
        APP_ID,
        devmetrics::sim::github::TEST_APP_KEY_PEM.as_bytes(),
        now,
    )
    .unwrap();
    assert_eq!(exchange(ours).await, 201);
}

/// A 5xx from the token exchange is retried like any request.
#[tokio::test]
async fn the_token_exchange_is_retried_on_5xx() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim.fail_path("/access_tokens", 2);
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    let telemetry = Telemetry::default();
    sources::poll_once(&*gh.pollers[0], &*store, &telemetry).await;
    assert!(telemetry.sources()["github/acme"].up);
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}
