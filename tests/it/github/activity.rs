//! Activity equals the fake's ground truth: windows, labels, bots, LOC, several orgs, restarts.

use super::*;

#[tokio::test]
async fn activity_equals_ground_truth_then_costs_nothing_when_unchanged() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    let p = gh.pollers[0].clone();

    poll(&*p, &store).await;
    let truth = env.sim.truth(ORG, env.now());
    assert!(truth.keys().any(|k| k.0 == "gh_activity_commits_24h"));
    assert!(truth.keys().any(|k| k.0 == "gh_activity_loc_added_weekly"));
    assert!(
        truth
            .keys()
            .any(|k| k.0 == "gh_activity_reviews_submitted_24h")
    );
    assert_same(&exported(&store), &truth);
    eprintln!(
        "cold: {} series, {} counted requests, by route {:?}",
        truth.len(),
        env.sim.counted(),
        env.fake.requests.all()
    );
    assert!(
        env.sim.tokens_issued.load(Ordering::Relaxed) >= 1,
        "App token exchanged"
    );
    let got = exported(&store);
    assert!(
        !got.keys().any(|k| k.2.ends_with("[bot]")),
        "bots excluded by default"
    );
    assert!(!got.keys().any(|k| k.1 == "old-archived" || k.1 == "a-fork"));

    // A minute later, nothing changed: same truth for the moved window, and (almost) every
    // request is a free 304.
    let before = env.sim.counted();
    env.advance(60);
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    let spent = env.sim.counted() - before;
    eprintln!("steady: {spent} counted requests");
    assert!(spent < 20, "steady state spent {spent} requests");

    // New activity shows up in the next cycle.
    let t = env.advance(60);
    env.sim.add_commit(ORG, "repo-000", "user001", t - 5, 10, 2);
    env.sim.add_comment(ORG, "repo-001", "user002", t - 5);
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}

#[tokio::test]
async fn quiet_users_disappear() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    // The REST path for PRs and reviews (GraphQL off).
    let (_cfg, store, _queue, _stop, gh) = env.rig("graphql: false\n").await;
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let first = exported(&store);
    assert!(first.keys().any(|k| k.2 == "user000" || k.2 == "user001"));

    // 25 hours on, only one user acted: everyone else's 24h series are gone.
    let t = env.advance(25 * 3600);
    env.sim
        .add_commit(ORG, "repo-002", "user005", t - 100, 1, 1);
    poll(&*p, &store).await;
    let got = exported(&store);
    assert_same(&got, &env.sim.truth(ORG, t));
    for k in got.keys().filter(|k| k.0.ends_with("_24h")) {
        assert_eq!(k.2, "user005", "{k:?} should have disappeared");
    }
    assert_eq!(env.fake.requests.count("POST /graphql"), 0);
    assert!(
        env.fake
            .requests
            .count("GET /repos/{owner}/{repo}/pulls/{number}/reviews")
            > 0
    );
}

#[tokio::test]
async fn restart_keeps_values_and_etags() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    {
        let (store, queue) = env.open().await;
        let stop = CancellationToken::new();
        let gh = env.build(&cfg, &store, &queue, &stop);
        poll(&*gh.pollers[0], &store).await;
        stop.cancel();
    }
    let (store, queue) = env.open().await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let before = env.sim.counted();
    env.advance(30);
    poll(&*gh.pollers[0], &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    let spent = env.sim.counted() - before;
    // ETags belong to the token that got them: the persisted token is used again.
    assert_eq!(env.sim.tokens_issued.load(Ordering::Relaxed), 1);
    assert!(
        spent < 20,
        "after a restart the cached ETags still answer 304: spent {spent}"
    );
}

#[tokio::test]
async fn label_controls_apply() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let (_cfg, store, _queue, _stop, gh) = env.rig("activity: {user_label_mode: hashed, user_label_secret: s3cret, user_exclude: [user000], include_bots: true}\n",).await;
    poll(&*gh.pollers[0], &store).await;
    let got = exported(&store);
    assert!(!got.is_empty());
    for k in got.keys() {
        assert_eq!(k.2.len(), 16, "hashed user label {k:?}");
        assert!(k.2.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

/// A repo whose stats carry no line counts (GitHub's 10k-commit behaviour) gets its weekly LOC
/// from commit details, within the hourly budget, and equal to the truth.
#[tokio::test]
async fn loc_fallback_for_repos_whose_stats_have_no_line_counts() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    // Commits in last week for two repos, so LOC exists there.
    let last_week = devmetrics::sources::github::wire::week_start(NOW) - 7 * 86_400 + 3600;
    env.sim
        .add_commit(ORG, "repo-000", "user004", last_week, 70, 7);
    env.sim
        .add_commit(ORG, "repo-000", "user003", last_week + 60, 5, 50);
    env.sim
        .add_commit(ORG, "repo-001", "user004", last_week, 11, 1);
    env.sim
        .knobs
        .zero_stats_repos
        .lock()
        .insert("repo-000".into());
    let cfg = env.config("activity: {series_budget_per_org: 1000000}\n");
    let mut cfg = cfg;
    cfg.loc.fallback_enabled = true;
    cfg.loc.large_repo_zero_detection_windows = 1;
    let (store, queue) = env.open().await;
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    poll(&*gh.pollers[0], &store).await;
    assert!(
        env.fake
            .requests
            .count("GET /repos/{owner}/{repo}/commits/{sha}")
            >= 2
    );
    let want = env.sim.truth(ORG, env.now());
    assert_eq!(
        want.get(&(
            "gh_activity_loc_added_weekly".into(),
            "repo-000".into(),
            "user004".into()
        )),
        exported(&store).get(&(
            "gh_activity_loc_added_weekly".into(),
            "repo-000".into(),
            "user004".into()
        ))
    );
    assert_same(&exported(&store), &want);

    // A budget too small for the week: no partial LOC is shown, the deferral is counted.
    let env2 = Env::start(OrgSpec::small(ORG)).await;
    env2.sim
        .add_commit(ORG, "repo-000", "user004", last_week, 70, 7);
    env2.sim
        .knobs
        .zero_stats_repos
        .lock()
        .insert("repo-000".into());
    let mut cfg2 = env2.config("");
    cfg2.loc.fallback_enabled = true;
    cfg2.loc.fallback_max_commit_detail_calls_per_org_per_hour = 1;
    let (store2, queue2) = env2.open().await;
    let gh2 = env2.build(&cfg2, &store2, &queue2, &stop);
    poll(&*gh2.pollers[0], &store2).await;
    assert!(
        !exported(&store2)
            .keys()
            .any(|k| k.1 == "repo-000" && k.0.starts_with("gh_activity_loc_"))
    );
    assert!(gauge(&gh2, "devmetrics_github_loc_fallback_deferred_total").await >= 1.0);
}

/// Two orgs, one on the App and one on a token, each exact against its own truth.
#[tokio::test]
async fn several_orgs_with_their_own_credentials() {
    let now = Arc::new(AtomicI64::new(NOW));
    let c = now.clone();
    let clock = Clock::from_fn(move || c.load(Ordering::SeqCst));
    let sim = GithubSim::new(
        11,
        clock.clone(),
        &[OrgSpec::small("acme"), OrgSpec::small("globex")],
    );
    *sim.pat.lock() = Some("ghp_globex".into());
    let fake = FakeServer::start("github", sim.router(), Faults::new(11))
        .await
        .unwrap();
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github/test-app-key.pem");
    let yaml = format!(
        "api_base_url: {}\norgs:\n  - {{org: acme, app_id: {APP_ID}, installation_id: {INSTALLATION_ID}, private_key_path: {}}}\n  - {{org: globex, token: ghp_globex}}\nloc: {{stats_retry_delay: 10ms}}\n",
        fake.base_url(),
        key.display()
    );
    let raw: RawGithub = serde_yaml::from_str(&yaml).unwrap();
    let cfg = raw.resolve(None).unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::from_env()
        .open(dir.path(), &RetryPolicy::default())
        .await;
    let (store, queue) = (b.store, b.queue);
    let gh = Github::build(
        &cfg,
        store.clone(),
        queue,
        Arc::new(Telemetry::default()),
        CancellationToken::new(),
        clock,
    )
    .unwrap();
    for p in &gh.pollers {
        poll(&**p, &store).await;
    }
    for org in ["acme", "globex"] {
        let mut got = Series::new();
        for scope in store.snapshot().scopes.iter() {
            for (fid, series) in &scope.families {
                for (labels, v) in series {
                    if labels.get("org").as_deref() == Some(org) {
                        got.insert(
                            (
                                family(*fid).name.to_string(),
                                labels.get("repo").unwrap(),
                                labels.get("user").unwrap(),
                            ),
                            v.as_f64().unwrap(),
                        );
                    }
                }
            }
        }
        assert_same(&got, &sim.truth(org, NOW));
    }
    assert_eq!(
        sim.tokens_issued.load(Ordering::Relaxed),
        1,
        "only acme uses the App"
    );
}

/// Reviews and comments move neither `pushed_at` nor `updated_at` on GitHub: a repo without
/// a recent push still has its conversations counted, cold (GraphQL) and warm (REST).
#[tokio::test]
async fn reviews_and_comments_in_repos_without_a_recent_push_count() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let quiet = |repo: &str| {
        env.sim.with_org(ORG, |o| {
            let r = o.repos.iter().find(|r| r.name == repo).unwrap();
            assert!(r.pushed_at < env.now() - 86_400 && r.updated_at < env.now() - 86_400);
        })
    };
    quiet("repo-006");
    quiet("repo-007");
    env.sim.add_review(ORG, "repo-006", "user002", NOW - 600);
    env.sim.add_comment(ORG, "repo-006", "user003", NOW - 500);
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let got = exported(&store);
    assert_same(&got, &env.sim.truth(ORG, env.now()));
    assert!(got.contains_key(&(
        "gh_activity_reviews_submitted_24h".into(),
        "repo-006".into(),
        "user002".into()
    )));

    let t = env.advance(60);
    env.sim.add_review(ORG, "repo-007", "user004", t - 10);
    env.sim.add_comment(ORG, "repo-007", "user005", t - 10);
    poll(&*p, &store).await;
    let got = exported(&store);
    assert_same(&got, &env.sim.truth(ORG, t));
    assert!(got.contains_key(&(
        "gh_activity_issue_comments_24h".into(),
        "repo-007".into(),
        "user005".into()
    )));
}

/// GraphQL names a bot `dependabot` where REST says `dependabot[bot]`: bots stay excluded on
/// the cold (GraphQL) cycle, and when included carry the same label cold and warm.
#[tokio::test]
async fn bots_look_the_same_over_graphql_and_rest() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim
        .add_review(ORG, "repo-000", "dependabot[bot]", NOW - 600);
    let (_cfg, store, _queue, stop, gh) = env.rig("").await;
    poll(&*gh.pollers[0], &store).await;
    assert!(env.sim.graphql_queries() > 0, "the cold cycle used GraphQL");
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));

    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim
        .add_review(ORG, "repo-000", "dependabot[bot]", NOW - 600);
    let cfg = env.config("activity: {include_bots: true}\n");
    let (store, queue) = env.open().await;
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let key = |u: &str| {
        (
            "gh_activity_reviews_submitted_24h".to_string(),
            "repo-000".to_string(),
            u.to_string(),
        )
    };
    assert_eq!(exported(&store).get(&key("dependabot[bot]")), Some(&1.0));
    let t = env.advance(60);
    env.sim
        .add_review(ORG, "repo-000", "dependabot[bot]", t - 10);
    let graphql = env.sim.graphql_queries();
    poll(&*p, &store).await;
    assert_eq!(
        env.sim.graphql_queries(),
        graphql,
        "the warm cycle used REST"
    );
    let got = exported(&store);
    assert_eq!(got.get(&key("dependabot[bot]")), Some(&2.0));
    assert!(!got.keys().any(|k| k.2 == "dependabot"));
}

/// GitHub selects commits by committer date: a commit rebased today but authored days ago is
/// today's activity, in the window and in the weekly LOC alike.
#[tokio::test]
async fn commits_count_by_committer_date() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    env.sim.add_rebased_commit(
        ORG,
        "repo-001",
        "user005",
        NOW - 3 * 86_400,
        NOW - 300,
        9,
        4,
    );
    let generated_rebased = env.sim.with_org(ORG, |o| {
        o.repos
            .iter()
            .flat_map(|r| &r.commits)
            .filter(|c| c.authored != c.at && c.at > NOW - 86_400)
            .count()
    });
    assert!(generated_rebased > 1, "the fake rebases some commits");
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    poll(&*gh.pollers[0], &store).await;
    let got = exported(&store);
    assert_same(&got, &env.sim.truth(ORG, env.now()));
    assert!(got.contains_key(&(
        "gh_activity_commits_24h".into(),
        "repo-001".into(),
        "user005".into()
    )));
}

/// A failing `/stats/contributors` keeps the week's cached LOC, publishes the repo's activity
/// anyway, and the LOC is fetched again on a later cycle.
#[tokio::test]
async fn failing_stats_keep_the_loc_and_publish_activity() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));

    // A day on (LOC is due again), stats fail past the retries; a new commit must show.
    let t = env.advance(25 * 3600);
    env.sim.add_commit(ORG, "repo-000", "user005", t - 60, 3, 1);
    env.sim.fail_path("/stats/contributors", 1000);
    let telemetry = Telemetry::default();
    sources::poll_once(&*p, &*store, &telemetry).await;
    assert!(telemetry.sources()["github/acme"].up);
    assert_same(&exported(&store), &env.sim.truth(ORG, t));

    env.sim.fail_path("/stats/contributors", 0);
    let route = "GET /repos/{owner}/{repo}/stats/contributors";
    let before = env.fake.requests.count(route);
    env.advance(60);
    poll(&*p, &store).await;
    assert!(env.fake.requests.count(route) > before, "LOC retried");
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}

/// A cycle spread over `github/scrape` jobs, taken by two consumers as two replicas would:
/// the same ground truth as a cycle scraped in one place, at the same steady cost, and a
/// repo that fails in a job is reported by the leader's cycle and backfilled.
#[tokio::test]
async fn a_cycle_spread_over_jobs_equals_the_ground_truth() {
    use devmetrics::queue::topics;
    use devmetrics::sources::github::poller::{Distribution, Scrape};
    let env = Env::start(OrgSpec::small(ORG)).await;
    let cfg = env.config("");
    let policy = RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        horizon: Duration::from_secs(3600),
    };
    let b = Backend::from_env().open(env.dir.path(), &policy).await;
    let (store, queue) = (b.store.clone(), b.queue.clone());
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let leadership =
        devmetrics::ha::Leadership::new("leader".into(), Duration::from_secs(30), b.lease.clone());
    leadership.step().await;
    assert!(leadership.is_leader());
    let p = gh.pollers[0].clone();
    p.distribute(Distribution {
        batch_size: 2,
        leadership: leadership.clone(),
    });
    let handler = Arc::new(Scrape {
        pollers: [(ORG.to_string(), p.clone())].into_iter().collect(),
    });
    let mut consumers = Vec::new();
    for _ in 0..2 {
        consumers.push(tokio::spawn(devmetrics::queue::run_consumer(
            queue.clone(),
            topics::GITHUB_SCRAPE.to_string(),
            handler.clone(),
            stop.clone(),
        )));
    }

    let telemetry = Telemetry::default();
    sources::poll_once(&*p, &*store, &telemetry).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    assert!(telemetry.sources()[&format!("github/{ORG}")].up);
    let stats = queue.stats().await.unwrap();
    let jobs = stats
        .iter()
        .find(|(t, _)| t == topics::GITHUB_SCRAPE)
        .map(|(_, s)| s.published)
        .unwrap_or(0);
    let repos = env.sim.with_org(ORG, |o| o.repos.len()) as u64;
    assert!(jobs >= 2 && jobs < repos, "{jobs} jobs for {repos} repos");

    // Unchanged a minute later: the probes' 304s are shared through the store, so jobs cost
    // what a cycle in one place costs.
    let before = env.sim.counted();
    env.advance(60);
    sources::poll_once(&*p, &*store, &telemetry).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    let spent = env.sim.counted() - before;
    assert!(spent < 20, "steady state spent {spent} requests");

    // New activity in the next cycle, whichever job scrapes it.
    let t = env.advance(60);
    env.sim.add_commit(ORG, "repo-000", "user001", t - 5, 10, 2);
    env.sim.add_comment(ORG, "repo-003", "user002", t - 5);
    sources::poll_once(&*p, &*store, &telemetry).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));

    // A deposed leader schedules nothing: its fenced write is refused.
    let other =
        devmetrics::ha::Leadership::new("other".into(), Duration::from_secs(30), b.lease.clone());
    b.lease
        .release("leader", "leader", leadership.fence())
        .await
        .unwrap();
    other.step().await;
    assert!(other.is_leader());
    let published = |stats: &[(String, devmetrics::queue::TopicStats)]| {
        stats
            .iter()
            .find(|(t, _)| t == topics::GITHUB_SCRAPE)
            .map(|(_, s)| s.published)
            .unwrap_or(0)
    };
    let before = published(&queue.stats().await.unwrap());
    env.advance(60);
    let results = p.poll().await;
    assert!(results.is_empty(), "a deposed leader's cycle is a skip");
    assert!(!leadership.is_leader(), "the fenced-off leader steps down");
    assert_eq!(published(&queue.stats().await.unwrap()), before);
    stop.cancel();
    for c in consumers {
        c.await.unwrap();
    }
}
