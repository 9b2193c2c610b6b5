//! `devmetrics doctor` against the GitHub fake: a fully granted App passes; an installation
//! missing the permissions of configured features, a disabled Copilot policy and a wrong
//! installation are each named; no secret appears in what it prints.

use std::sync::atomic::Ordering;

use devmetrics::doctor::{Report, Verdict};
use devmetrics::sim::github::copilot::CopilotData;
use devmetrics::sim::github::{APP_ID, GithubSim, INSTALLATION_ID, OrgSpec};
use devmetrics::sim::{FakeServer, Faults};

async fn fake() -> (std::sync::Arc<GithubSim>, FakeServer) {
    let sim = GithubSim::new(
        3,
        devmetrics::clock::Clock::system(),
        &[OrgSpec::small("acme")],
    );
    sim.copilot.data.lock().insert(
        "acme".into(),
        CopilotData::generate(1, devmetrics::clock::now_secs(), 4, 30),
    );
    let api = FakeServer::start("github", sim.router(), Faults::new(1))
        .await
        .unwrap();
    (sim, api)
}

async fn doctor(api: &str, installation: u64) -> Report {
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/github/test-app-key.pem");
    let yaml = |s: String| serde_yaml::from_str::<serde_yaml::Value>(&s).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::support::config_with(
        dir.path(),
        &[
            (
                "github",
                yaml(format!(
                    "api_base_url: {api}\norgs:\n  - org: acme\n    app_id: {APP_ID}\n    installation_id: {installation}\n    private_key_path: {}\n    scrape_interval: 5m\n",
                    key.display()
                )),
            ),
            ("copilot", yaml("{enabled: true, include_seats: true}".into())),
            (
                "webhooks",
                yaml("{github: {secrets: [{value: wh-s3cret-value}], runners: {orgs: [acme]}, recovery: [{org: acme, hook_id: 12}]}}".into()),
            ),
        ],
    );
    devmetrics::doctor::run(&cfg).await
}

fn verdict(r: &Report, subject: &str, what: &str) -> Verdict {
    r.checks
        .iter()
        .find(|c| c.subject == subject && c.what == what)
        .unwrap_or_else(|| panic!("no check {subject} {what}:\n{}", r.table()))
        .verdict
}

#[tokio::test]
async fn doctor_names_what_works_and_what_is_missing() {
    let (sim, api) = fake().await;
    let base = api.base_url();

    let r = doctor(&base, INSTALLATION_ID).await;
    assert!(r.ok(), "{}", r.table());
    for what in [
        "App installation token",
        "organization",
        "contributor activity: contents",
        "Copilot usage reports: organization_copilot_metrics",
        "Copilot seats: organization_copilot_seat_management",
        "runner inventory: organization_self_hosted_runners",
        "missed-delivery recovery: organization_hooks",
        "rate limit",
        "budget for the interval",
    ] {
        assert_eq!(verdict(&r, "github/acme", what), Verdict::Ok, "{what}");
    }
    assert_eq!(verdict(&r, "copilot/acme", "usage reports"), Verdict::Ok);

    // The installation loses two permissions: each feature needing one is named.
    {
        let mut p = sim.knobs.permissions.lock();
        p.remove("organization_copilot_metrics");
        p.insert("organization_hooks".into(), "read".into());
    }
    let r = doctor(&base, INSTALLATION_ID).await;
    assert!(!r.ok());
    let table = r.table();
    assert_eq!(
        verdict(
            &r,
            "github/acme",
            "Copilot usage reports: organization_copilot_metrics"
        ),
        Verdict::Missing
    );
    assert_eq!(
        verdict(
            &r,
            "github/acme",
            "missed-delivery recovery: organization_hooks"
        ),
        Verdict::Missing,
        "read is not write"
    );
    assert_eq!(
        verdict(&r, "copilot/acme", "usage reports"),
        Verdict::Missing,
        "the endpoint answers 403"
    );
    assert_eq!(
        verdict(&r, "github/acme", "contributor activity: contents"),
        Verdict::Ok
    );
    assert!(
        table.contains("MISSING") && table.contains("cannot work"),
        "{table}"
    );

    // The policy is off: 422 from the reports endpoint.
    *sim.knobs.permissions.lock() = devmetrics::sim::github::full_permissions();
    sim.copilot
        .status
        .lock()
        .insert("organization-28-day".into(), 422);
    let r = doctor(&base, INSTALLATION_ID).await;
    let c = r
        .checks
        .iter()
        .find(|c| c.subject == "copilot/acme")
        .unwrap();
    assert_eq!(c.verdict, Verdict::Missing);
    assert!(c.detail.contains("policy"), "{}", c.detail);

    // A wrong installation: the token exchange fails and nothing else is tried.
    let r = doctor(&base, INSTALLATION_ID + 1).await;
    assert_eq!(
        verdict(&r, "github/acme", "App installation token"),
        Verdict::Failed
    );
    assert_eq!(r.checks.len(), 1, "{}", r.table());

    // Nothing secret is printed: the key, the webhook secret, the installation tokens.
    let pem = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/github/test-app-key.pem"),
    )
    .unwrap();
    let key_line = pem.lines().nth(1).unwrap();
    assert!(sim.tokens_issued.load(Ordering::Relaxed) > 0);
    for r in [doctor(&base, INSTALLATION_ID).await, r] {
        let t = r.table();
        assert!(
            !t.contains(key_line) && !t.contains("wh-s3cret-value") && !t.contains("ghs_sim"),
            "{t}"
        );
    }
}
