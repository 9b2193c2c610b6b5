//! Failures keep the last values; backfills restore the exact window and never overwrite a newer one.

use super::*;

#[tokio::test]
async fn failures_keep_values_and_backfill_restores_the_exact_window() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let (_cfg, store, _queue, stop, gh) = env.rig("").await;
    let p = gh.pollers[0].clone();
    let telemetry = Telemetry::default();
    sources::poll_once(&*p, &*store, &telemetry).await;
    let t1 = env.now();
    assert_same(&exported(&store), &env.sim.truth(ORG, t1));
    let last_success = |t: &Telemetry| t.sources()["github/acme"].last_success_timestamp;
    let first_success = last_success(&telemetry).expect("first cycle succeeded");

    // Cycle 2: a new comment, but the comments endpoint keeps failing (5xx past the
    // retries) and a secondary limit is thrown in on the way.
    let t2 = env.advance(120);
    env.sim.add_comment(ORG, "repo-001", "user003", t2 - 30);
    env.sim.fail_path("/issues/comments", 100);
    env.sim.knobs.secondary_next.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    sources::poll_once(&*p, &*store, &telemetry).await;
    assert!(!telemetry.sources()["github/acme"].up);
    assert_eq!(
        last_success(&telemetry),
        Some(first_success),
        "the values' age grows"
    );
    let got = exported(&store);
    let stale = env.sim.truth(ORG, t1);
    let only_repo1 = |s: &Series| -> Series {
        s.iter()
            .filter(|k| k.0.1 == "repo-001")
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    assert_eq!(
        only_repo1(&got),
        only_repo1(&stale),
        "failed repo keeps its last values"
    );
    assert!(
        env.sim.knobs.secondary_next.load(Ordering::Relaxed) == 0,
        "secondary limit was hit and waited out"
    );

    // GitHub recovers; the backfill job re-scrapes exactly [t2 − 24h, t2].
    env.sim.fail_path("/issues/comments", 0);
    for c in gh.consumers(stop.clone()) {
        tokio::spawn(c);
    }
    let want = env.sim.truth(ORG, t2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while only_repo1(&exported(&store)) != only_repo1(&want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backfill did not restore the window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_same(&exported(&store), &want);
    stop.cancel();
}

#[tokio::test]
async fn repeated_failures_cool_the_org_down_and_skipped_cycles_are_backfilled() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let (_cfg, store, _queue, stop, gh) = env.rig("").await;
    let p = gh.pollers[0].clone();
    env.sim.fail_path("/orgs/acme/repos", 1000);
    poll(&*p, &store).await;
    env.advance(60);
    poll(&*p, &store).await;
    assert_eq!(gauge(&gh, "devmetrics_github_org_cooldown").await, 1.0);
    let before = env.fake.requests.total();
    let skipped = env.advance(30);
    poll(&*p, &store).await;
    assert_eq!(
        env.fake.requests.total(),
        before,
        "no request during the cooldown"
    );

    env.sim.fail_path("/orgs/acme/repos", 0);
    for c in gh.consumers(stop.clone()) {
        tokio::spawn(c);
    }
    // The newest skipped window is what must end up shown (older jobs are superseded).
    let want = env.sim.truth(ORG, skipped);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while exported(&store) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backfill did not fill the skipped cycle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
}

/// Hanging and malformed answers fail the cycle with bounded kinds; the last values stay and
/// the next good cycle is exact again.
#[tokio::test]
async fn timeouts_and_malformed_bodies_keep_the_last_values() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let mut cfg = env.config("");
    cfg.request_timeout = Duration::from_millis(300);
    let (store, queue) = env.open().await;
    let stop = CancellationToken::new();
    let gh = env.build(&cfg, &store, &queue, &stop);
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let good = exported(&store);
    assert_same(&good, &env.sim.truth(ORG, env.now()));

    env.fake.faults.hang_ms.store(2_000, Ordering::Relaxed);
    env.fake
        .faults
        .timeout_per_mille
        .store(1000, Ordering::Relaxed);
    env.advance(60);
    let results = p.poll().await;
    assert!(
        results
            .iter()
            .any(|r| matches!(&r.result, Err(e) if e.kind == "timeout"))
    );
    env.fake.faults.clear();
    // Malformed bodies: a changed repo must be fetched, and its truncated JSON is refused.
    let t = env.advance(60);
    env.sim.add_commit(ORG, "repo-000", "user002", t - 5, 3, 3);
    env.fake
        .faults
        .malformed_per_mille
        .store(1000, Ordering::Relaxed);
    let results = p.poll().await;
    // The changed repo changed the listing too: the truncated listing fails the cycle.
    assert!(
        results
            .iter()
            .any(|r| matches!(&r.result, Err(e) if e.kind == "decode")),
        "{:?}",
        results.iter().map(|r| r.result.is_ok()).collect::<Vec<_>>()
    );
    assert_eq!(exported(&store), good, "failed cycles keep the last values");

    env.fake.faults.clear();
    env.advance(60);
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    assert_eq!(
        gauge(&gh, "devmetrics_github_scrape_progress_ratio").await,
        1.0
    );
}

/// A change seen by a probe whose fetch then fails must not be hidden behind the probe's new
/// ETag next cycle (comments do not move the repo's `updated_at` on GitHub).
#[tokio::test]
async fn a_change_seen_by_a_failed_cycle_is_fetched_next_cycle() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    let t = env.advance(60);
    env.sim.add_comment(ORG, "repo-002", "user004", t - 10);
    env.sim.fail_path("/commits", 100);
    poll(&*p, &store).await;
    env.sim.fail_path("/commits", 0);
    env.advance(60);
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}

/// A cycle skipped for the cooldown is a failure of the org, not a success: the source shows
/// down and the last success time stays where it was.
#[tokio::test]
async fn cooldown_shows_the_org_down() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    let p = gh.pollers[0].clone();
    let telemetry = Telemetry::default();
    sources::poll_once(&*p, &*store, &telemetry).await;
    let last_success = |t: &Telemetry| t.sources()["github/acme"].last_success_timestamp;
    let first = last_success(&telemetry).expect("first cycle succeeded");
    env.sim.fail_path("/orgs/acme/repos", 1000);
    for _ in 0..2 {
        env.advance(60);
        sources::poll_once(&*p, &*store, &telemetry).await;
    }
    assert_eq!(gauge(&gh, "devmetrics_github_org_cooldown").await, 1.0);
    env.sim.fail_path("/orgs/acme/repos", 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.advance(30);
    let before = env.fake.requests.total();
    sources::poll_once(&*p, &*store, &telemetry).await;
    assert_eq!(
        env.fake.requests.total(),
        before,
        "no request in the cooldown"
    );
    assert!(!telemetry.sources()["github/acme"].up);
    assert_eq!(last_success(&telemetry), Some(first));
}

/// A backfill finishing while a newer cycle records the same repo never leaves the older
/// window shown, whichever side writes first: the store checks the window's version
/// atomically with the write.
#[tokio::test]
async fn a_backfill_racing_a_newer_cycle_never_wins() {
    use devmetrics::sources::github::BackfillJob;
    for order in ["backfill first", "cycle first", "together"] {
        let env = Env::start(OrgSpec::small(ORG)).await;
        let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
        let p = gh.pollers[0].clone();
        poll(&*p, &store).await;
        let t1 = env.advance(60);
        env.sim.add_comment(ORG, "repo-001", "user003", t1 - 5);
        let t2 = env.advance(60);
        env.sim.add_comment(ORG, "repo-001", "user004", t2 - 5);
        let job = BackfillJob {
            org: ORG.into(),
            repo: Some("repo-001".into()),
            window_end: t1,
            reason: "test".into(),
        };
        let (pb, pc, s) = (p.clone(), p.clone(), store.clone());
        let backfill = async move { pb.backfill(&job).await };
        let cycle = async move { poll(&*pc, &s).await };
        match order {
            "backfill first" => {
                backfill.await.unwrap();
                cycle.await;
            }
            "cycle first" => {
                cycle.await;
                backfill.await.unwrap();
            }
            _ => {
                let (b, ()) = tokio::join!(backfill, cycle);
                b.unwrap();
            }
        }
        assert_same(&exported(&store), &env.sim.truth(ORG, t2));
    }
}

/// The org-wide search is an optimisation: while it fails, each repo is probed (and still
/// found with its new review or comment); when it answers again, what changed meanwhile is
/// found by the search from the last detection that succeeded.
#[tokio::test]
async fn a_failing_search_falls_back_to_probes_and_misses_nothing() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    let p = gh.pollers[0].clone();
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    assert_eq!(
        env.fake.requests.count("GET /repos/{owner}/{repo}/pulls"),
        0
    );

    // Search answers 500 (three attempts a cycle) for two cycles.
    env.sim.fail_path_with("/search/issues", 6, 500);
    for (repo, user) in [("repo-006", "user001"), ("repo-007", "user002")] {
        let t = env.advance(300);
        env.sim.add_review(ORG, repo, user, t - 20);
        env.sim.add_comment(ORG, repo, user, t - 10);
        poll(&*p, &store).await;
        assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    }
    assert_eq!(
        gauge(&gh, "devmetrics_github_change_detection_fallbacks_total").await,
        2.0
    );
    assert!(env.fake.requests.count("GET /repos/{owner}/{repo}/pulls") > 0);

    // Search again: a comment in a repo without a push, found by it alone.
    let probes = env.fake.requests.count("GET /repos/{owner}/{repo}/pulls");
    let t = env.advance(300);
    env.sim.add_comment(ORG, "repo-005", "user003", t - 10);
    poll(&*p, &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    assert_eq!(gauge(&gh, "devmetrics_github_changed_repos").await, 1.0);
    let fetched = env.fake.requests.count("GET /repos/{owner}/{repo}/pulls") - probes;
    assert!(fetched <= 1, "{fetched} pull listings: only repo-005's");
}

/// Search serves 1,000 results of a query at most: a window holding more is split by time
/// until each part fits, and nothing beyond the cap is lost.
#[tokio::test]
async fn more_than_a_thousand_search_results_are_split_by_time() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let now = env.now();
    for i in 0..1_200i64 {
        let repo = format!("repo-{:03}", 5 + i % 3);
        env.sim
            .add_comment(ORG, &repo, &format!("user{:03}", i % 6), now - 60 - i * 60);
    }
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    poll(&*gh.pollers[0], &store).await;
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
    // At least: the refused first page, two halves, and 13 pages of results.
    assert!(
        env.sim.search_requests() >= 15,
        "{}",
        env.sim.search_requests()
    );
}

/// A listing whose last page links back to the first is an error after one pass, not a
/// loop spending the budget until the cycle's deadline: the org's source is down with the
/// reason, every repo keeps its last values, and once GitHub behaves the next cycle is
/// exact again.
#[tokio::test]
async fn pagination_that_loops_fails_at_once_and_keeps_the_last_values() {
    let env = Env::start(OrgSpec::small(ORG)).await;
    let (_cfg, store, _queue, _stop, gh) = env.rig("").await;
    let p = gh.pollers[0].clone();
    let telemetry = Telemetry::default();
    sources::poll_once(&*p, &*store, &telemetry).await;
    let shown = exported(&store);
    assert_same(&shown, &env.sim.truth(ORG, env.now()));

    *env.sim.knobs.looping_pages.lock() = Some(format!("/orgs/{ORG}/repos"));
    let t = env.advance(120);
    env.sim.add_commit(ORG, "repo-001", "user003", t - 30, 4, 1);
    let before = env.sim.counted();
    tokio::time::timeout(
        Duration::from_secs(30),
        sources::poll_once(&*p, &*store, &telemetry),
    )
    .await
    .expect("a looping listing ends the cycle");
    let health = &telemetry.sources()["github/acme"];
    assert!(!health.up);
    assert!(
        health
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("pagination links back")),
        "{health:?}"
    );
    assert!(
        env.sim.counted() - before <= 3,
        "{} requests",
        env.sim.counted() - before
    );
    assert_same(&exported(&store), &shown);

    *env.sim.knobs.looping_pages.lock() = None;
    env.advance(60);
    sources::poll_once(&*p, &*store, &telemetry).await;
    assert!(telemetry.sources()["github/acme"].up);
    assert_same(&exported(&store), &env.sim.truth(ORG, env.now()));
}
