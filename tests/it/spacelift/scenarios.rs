//! The poller against the fake: every value equals ground truth; tokens, failures, timeouts, gates and filters.

use super::*;

#[tokio::test]
async fn every_exported_value_equals_ground_truth_as_the_account_changes() {
    // 23 stacks over page size 10: three pages.
    let rig = Rig::new(23, |_| {}).await;
    assert_eq!(rig.poller.name(), "spacelift");
    assert!(
        rig.poller.timeout() > Duration::from_secs(5),
        "outer guard past the scrape timeout"
    );
    let s = rig.poll().await;
    assert_matches(&s, &rig.fake.sim.account());
    assert!(rig.source_up());
    for g in spacelift::Group::ALL {
        let c = g.collector();
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_success", c),
            Some(1.0)
        );
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_supported", c),
            Some(1.0)
        );
        assert!(collector(&s, "spacelift_scrape_collector_duration_seconds", c).is_some());
    }
    assert!(get(&s, "spacelift_scrape_duration_seconds", &[]).is_some());
    assert_eq!(count(&s, "spacelift_build_info"), 1);
    assert_eq!(
        get(&s, "devmetrics_spacelift_stacks_omitted", &["budget"]),
        Some(0.0)
    );

    let before = rig.fake.sim.account();
    for _ in 0..40 {
        rig.fake.sim.tick();
    }
    let after = rig.fake.sim.account();
    assert_ne!(before, after);
    let s = rig.poll().await;
    assert_matches(&s, &after);

    let sim = &rig.fake.sim;
    assert_eq!(
        sim.exchanges.load(Ordering::Relaxed),
        1,
        "one token serves both polls"
    );
    assert!(!sim.exchange_had_headers.load(Ordering::Relaxed));
    assert!(!sim.query_missing_client_type.load(Ordering::Relaxed));
    assert_eq!(sim.unauthorized_answers.load(Ordering::Relaxed), 0);
    let ops: BTreeSet<String> = sim.operations.lock().iter().cloned().collect();
    assert_eq!(
        ops,
        [
            "DevmetricsAttention",
            "DevmetricsStacks",
            "PrometheusExporterAggregates",
            "PrometheusExporterPublicWorkerPool",
            "PrometheusExporterUsage",
            "PrometheusExporterWorkerPools"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(
        rig.fake.server.requests.count("POST /graphql"),
        1 + 2 * (5 + 3),
        "one exchange, then per poll five groups and three stack pages"
    );
}

#[tokio::test]
async fn token_expiry_mid_run_refreshes_once_and_loses_nothing() {
    let rig = Rig::new(6, |_| {}).await;
    let sim = &rig.fake.sim;
    rig.poll().await;
    assert_eq!(sim.exchanges.load(Ordering::Relaxed), 1);

    // Server-side expiry: every group is told "unauthorized" at once; one exchange follows
    // and each group retries with the new token.
    sim.revoke_tokens();
    sim.tick();
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_matches(&s, &sim.account());
    assert_eq!(sim.exchanges.load(Ordering::Relaxed), 2);
    assert_eq!(sim.unauthorized_answers.load(Ordering::Relaxed), 6);

    // Expiry announced by validUntil: the client refreshes before asking, so the API never
    // has to refuse it.
    sim.token_ttl_secs.store(3600, Ordering::Relaxed);
    sim.revoke_tokens();
    sim.token_ttl_secs.store(20, Ordering::Relaxed);
    // The cached token (valid for an hour) was revoked: one reactive refresh yields a token
    // inside the 30 s padding, so the next poll refreshes proactively.
    rig.poll().await;
    let unauthorized = sim.unauthorized_answers.load(Ordering::Relaxed);
    let exchanges = sim.exchanges.load(Ordering::Relaxed);
    sim.token_ttl_secs.store(3600, Ordering::Relaxed);
    let s = rig.poll().await;
    assert_matches(&s, &sim.account());
    assert_eq!(
        sim.unauthorized_answers.load(Ordering::Relaxed),
        unauthorized,
        "a refresh before validUntil needs no refusal"
    );
    assert_eq!(sim.exchanges.load(Ordering::Relaxed), exchanges + 1);
    rig.poll().await;
    assert_eq!(sim.exchanges.load(Ordering::Relaxed), exchanges + 1);
}

#[tokio::test]
async fn a_failing_group_keeps_its_last_values_marked_stale_and_blanks_nothing_else() {
    let rig = Rig::new(8, |_| {}).await;
    let sim = &rig.fake.sim;
    let s0 = rig.poll().await;
    let first = sim.account();
    let usage_success = collector(
        &s0,
        "devmetrics_spacelift_collector_last_success_timestamp_seconds",
        "usage",
    )
    .unwrap();

    sim.fail_field("usage", "internal server error");
    for _ in 0..30 {
        sim.tick();
    }
    sim.account.lock().usage.used_seats += 7;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let s = rig.poll().await;
    let now = sim.account();

    assert!(!rig.source_up(), "the source reports the failed group");
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "usage"),
        Some(0.0)
    );
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "workerpools"),
        Some(1.0)
    );
    // The failed group's values are the last good ones, and their age says so.
    assert_eq!(
        get(&s, "spacelift_current_billing_period_used_seats", &[]),
        Some(first.usage.used_seats as f64)
    );
    assert_eq!(
        collector(
            &s,
            "devmetrics_spacelift_collector_last_success_timestamp_seconds",
            "usage"
        ),
        Some(usage_success)
    );
    let fresh = collector(
        &s,
        "devmetrics_spacelift_collector_last_success_timestamp_seconds",
        "aggregates",
    )
    .unwrap();
    assert!(fresh > usage_success);
    // Everything else is current.
    let mut expected = now.clone();
    expected.usage = first.usage.clone();
    assert_matches(&s, &expected);
    let h = &rig.telemetry.sources()["spacelift"];
    assert!(h.last_error.as_deref().unwrap().contains("usage collector"));

    sim.clear_knobs();
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_matches(&s, &now);
}

#[tokio::test]
async fn a_timeout_fails_only_the_slow_group_within_the_deadline() {
    // The deadline leaves the healthy groups ample time on a loaded machine; the injected
    // delays are far past it, so only the deadline can have ended the slow requests.
    const DEADLINE: Duration = Duration::from_secs(3);
    const DELAY_MS: u64 = 60_000;
    let rig = Rig::new(4, |c| c.scrape_timeout = DEADLINE).await;
    let rec = Recording {
        inner: &rig.poller,
        errors: Default::default(),
    };
    let sim = &rig.fake.sim;
    sim.delay_field("metrics", DELAY_MS);
    let started = std::time::Instant::now();
    poll_once(&rec, &*rig.store, &rig.telemetry).await;
    let s = rig.store.snapshot();
    // Not a performance figure: proof the deadline cut the 60 s answer short.
    assert!(started.elapsed() < Duration::from_millis(DELAY_MS / 2));
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "aggregates"),
        Some(0.0)
    );
    assert_eq!(count(&s, "spacelift_current_stacks_count_by_state"), 0);
    for c in ["publicworkerpool", "workerpools", "usage", "stacks"] {
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_success", c),
            Some(1.0),
            "{c}"
        );
    }
    assert_eq!(
        get(&s, "spacelift_public_worker_pool_parallelism", &[]),
        Some(10.0)
    );
    assert!(!rig.source_up());
    {
        let errors = rec.errors.lock().unwrap();
        let (kind, message) = &errors["spacelift/aggregates"];
        assert_eq!(*kind, "timeout", "{message}");
        assert!(message.contains("aggregates collector"), "{message}");
        assert!(message.contains("timeout"), "{message}");
        let failed: BTreeSet<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            failed,
            ["spacelift/aggregates", "spacelift/attention"].into(),
            "only the groups asking the slow root field"
        );
    }

    // A slow upstream: the token exchange counts against the same deadline.
    sim.clear_knobs();
    rig.fake
        .server
        .faults
        .delay_ms
        .store(DELAY_MS, Ordering::Relaxed);
    sim.revoke_tokens();
    poll_once(&rec, &*rig.store, &rig.telemetry).await;
    let s = rig.store.snapshot();
    for g in spacelift::Group::ALL {
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_success", g.collector()),
            Some(0.0)
        );
        assert_eq!(rec.errors.lock().unwrap()[g.scope()].0, "timeout", "{g:?}");
    }
    assert_eq!(count(&s, "spacelift_build_info"), 0);
    let took = get(&s, "spacelift_scrape_duration_seconds", &[]).unwrap();
    assert!(took < (DELAY_MS / 2) as f64 / 1000.0, "{took}");
}

#[tokio::test]
async fn wrong_key_is_rejected_without_leaking_the_secret() {
    let rig = Rig::new(3, |c| {
        c.api_key_secret = SecretSource::Value(Secret::new("not-the-secret-xyzzy"))
    })
    .await;
    let s = rig.poll().await;
    assert!(rig.fake.sim.rejected_exchanges.load(Ordering::Relaxed) >= 1);
    assert_eq!(rig.fake.sim.operations.lock().len(), 0);
    assert_eq!(count(&s, "spacelift_public_worker_pool_parallelism"), 0);
    let h = &rig.telemetry.sources()["spacelift"];
    let err = h.last_error.clone().unwrap();
    assert!(err.contains("credentials"), "{err}");
    assert!(!err.contains("xyzzy"));
}

#[tokio::test]
async fn secret_file_is_reread_on_each_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "old-secret\n").unwrap();
    let p = path.clone();
    let rig = Rig::new(2, move |c| c.api_key_secret = SecretSource::File(p)).await;
    rig.poll().await;
    assert!(!rig.source_up());
    std::fs::write(
        &path,
        format!("  {}\n", devmetrics::sim::spacelift::KEY_SECRET),
    )
    .unwrap();
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_matches(&s, &rig.fake.sim.account());
}

#[tokio::test]
async fn machine_session_gate_is_unsupported_not_a_failure() {
    let rig = Rig::new(5, |_| {}).await;
    rig.poll().await;
    assert_eq!(count(&rig.store.snapshot(), "spacelift_stack_state"), 5);
    rig.fake
        .sim
        .fail_field("searchStacks", MACHINE_SESSION_GATE);
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_supported", "stacks"),
        Some(0.0)
    );
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "stacks"),
        Some(1.0)
    );
    assert_eq!(
        count(&s, "spacelift_stack_state"),
        0,
        "nothing to show, nothing stale"
    );
    // Older Self-Hosted releases gate the replaced exporter's own fields the same way.
    rig.fake.sim.fail_field("usage", MACHINE_SESSION_GATE);
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_supported", "usage"),
        Some(0.0)
    );
    assert_eq!(count(&s, "spacelift_current_billing_period_used_seats"), 0);
}

#[tokio::test]
async fn per_stack_data_is_refused_to_api_keys_by_default_and_said_so_once() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let rig = Rig::faithful(5, |_| {}).await;
    for _ in 0..3 {
        let s = rig.poll().await;
        assert!(rig.source_up(), "a refused collector is not a failure");
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_supported", "stacks"),
            Some(0.0)
        );
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_success", "stacks"),
            Some(1.0)
        );
        for f in [
            "spacelift_stack_state",
            "spacelift_stack_resources",
            "spacelift_stack_resources_drifted",
            "spacelift_runs",
            "devmetrics_spacelift_stacks_omitted",
        ] {
            assert_eq!(count(&s, f), 0, "{f}");
        }
        for g in spacelift::Group::ALL
            .iter()
            .filter(|g| **g != spacelift::Group::Stacks)
        {
            assert_eq!(
                collector(&s, "spacelift_scrape_collector_supported", g.collector()),
                Some(1.0),
                "{g:?}"
            );
        }
        assert_eq!(
            get(
                &s,
                "spacelift_current_avg_stack_size_by_resource_count",
                &[]
            ),
            rig.fake.sim.account().avg_stack_size(),
            "account-wide aggregates still flow"
        );
    }
    assert_eq!(
        logs.unsupported_warnings("stacks"),
        1,
        "warned once, not per poll"
    );
    assert_eq!(logs.unsupported_warnings("usage"), 0);

    // Spacelift lifts the gate: the per-stack families appear; if it comes back, the log
    // says so again.
    rig.fake.sim.gate_stacks(false);
    let s = rig.poll().await;
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_supported", "stacks"),
        Some(1.0)
    );
    assert_eq!(count(&s, "spacelift_stack_state"), 5);
    rig.fake.sim.gate_stacks(true);
    let s = rig.poll().await;
    assert_eq!(
        count(&s, "spacelift_stack_state"),
        0,
        "nothing stale is kept"
    );
    assert_eq!(logs.unsupported_warnings("stacks"), 2);
}

#[tokio::test]
async fn a_schema_mismatch_fails_the_group_except_the_optional_attention_fields() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let rig = Rig::new(4, |_| {}).await;
    let s0 = rig.poll().await;
    let sim = &rig.fake.sim;
    sim.fail_field(
        "usage",
        "Cannot query field \"usedSeats\" on type \"Usage\".",
    );
    sim.fail_field(
        "metrics/attention",
        "Cannot query field \"needsApprovalRuns\" on type \"Metrics\".",
    );
    let s = rig.poll().await;
    // usage: a bug or an unsupported release, reported as a failure with its own kind.
    assert!(!rig.source_up());
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "usage"),
        Some(0.0)
    );
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_supported", "usage"),
        Some(1.0)
    );
    assert_eq!(
        get(&s, "spacelift_current_billing_period_used_seats", &[]),
        get(&s0, "spacelift_current_billing_period_used_seats", &[]),
        "the failed group keeps its last values"
    );
    let err = rig.telemetry.sources()["spacelift"]
        .last_error
        .clone()
        .unwrap();
    assert!(err.contains("usage collector"), "{err}");
    assert!(err.contains("schema does not match"), "{err}");
    // attention: fields a Spacelift release may lack, so "not supported here".
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "attention"),
        Some(1.0)
    );
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_supported", "attention"),
        Some(0.0)
    );
    assert_eq!(count(&s, "spacelift_runs_needing_approval"), 0);
    assert_eq!(
        collector(&s, "spacelift_scrape_collector_success", "aggregates"),
        Some(1.0),
        "the same root with the replaced exporter's selection is unaffected"
    );
    assert_eq!(logs.unsupported_warnings("attention"), 1);
    assert_eq!(logs.unsupported_warnings("usage"), 0);
    let text = {
        let mut out = Vec::new();
        devmetrics::exposition::render(
            &[Arc::new(rig.telemetry.scope().await)],
            devmetrics::exposition::Format::Text,
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(
        text.contains("devmetrics_source_scrapes_total{source=\"spacelift\",result=\"schema\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn stack_filters_and_series_budget_are_applied_and_reported() {
    let rig = Rig::new(16, |c| {
        c.stacks.exclude_spaces = vec!["sandbox-*".into()];
        c.stacks.exclude_stacks = vec!["Stack 1".into()];
        c.stacks.series_budget = 20;
    })
    .await;
    let s = rig.poll().await;
    let a = rig.fake.sim.account();
    let filtered = a
        .stacks
        .iter()
        .filter(|st| st.space.starts_with("sandbox-") || st.name == "Stack 1")
        .count();
    let exported = count(&s, "spacelift_stack_state");
    assert!(exported > 0);
    let per_stack = 3 * exported + count(&s, "spacelift_runs");
    assert!(per_stack <= 20, "{per_stack}");
    assert_eq!(
        get(&s, "devmetrics_spacelift_stacks_omitted", &["filtered"]),
        Some(filtered as f64)
    );
    assert_eq!(
        get(&s, "devmetrics_spacelift_stacks_omitted", &["budget"]),
        Some((a.stacks.len() - filtered - exported) as f64)
    );
    for (l, _) in s.family(devmetrics::metrics::SPACELIFT_STACK_STATE) {
        assert!(!l.get("space").unwrap().starts_with("sandbox-"));
    }
    // The account-wide aggregates are not filtered.
    assert_eq!(
        get(
            &s,
            "spacelift_current_stacks_count_by_state",
            &["NONE", "", ""]
        ),
        a.stacks_count_by_state().get("NONE").copied()
    );
}

#[tokio::test]
async fn a_disabled_group_clears_what_an_earlier_run_left() {
    let rig = Rig::new(4, |_| {}).await;
    let s = rig.poll().await;
    assert_eq!(count(&s, "spacelift_stack_state"), 4);
    assert!(get(&s, "spacelift_current_billing_period_used_seats", &[]).is_some());
    // A restart with the groups switched off, on the same database.
    let mut cfg = demo_config(&rig.fake.base_url(), KEY_ID, KEY_SECRET);
    cfg.stacks.enabled = false;
    cfg.collectors.usage = false;
    let off = spacelift::Source::new(cfg, rig.telemetry.clone()).unwrap();
    poll_once(&off, &*rig.store, &rig.telemetry).await;
    let s = rig.store.snapshot();
    assert_eq!(count(&s, "spacelift_stack_state"), 0);
    assert_eq!(count(&s, "spacelift_current_billing_period_used_seats"), 0);
    assert_eq!(count(&s, "spacelift_scrape_collector_success"), 4);
    assert_matches_pools(&s, &rig.fake.sim.account());
}

#[tokio::test]
async fn http_errors_and_malformed_answers_fail_groups_with_bounded_kinds() {
    let rig = Rig::new(3, |_| {}).await;
    rig.poll().await;
    let faults = &rig.fake.server.faults;
    faults.fail_next.store(2, Ordering::Relaxed);
    let s = rig.poll().await;
    let failed = spacelift::Group::ALL
        .iter()
        .filter(|g| collector(&s, "spacelift_scrape_collector_success", g.collector()) == Some(0.0))
        .count();
    assert_eq!(failed, 2, "two 503s fail exactly two groups");
    faults.malformed_per_mille.store(1000, Ordering::Relaxed);
    let s = rig.poll().await;
    for g in spacelift::Group::ALL {
        assert_eq!(
            collector(&s, "spacelift_scrape_collector_success", g.collector()),
            Some(0.0)
        );
    }
    faults.clear();
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_matches(&s, &rig.fake.sim.account());
    let text = {
        let mut out = Vec::new();
        devmetrics::exposition::render(
            &[Arc::new(rig.telemetry.scope().await)],
            devmetrics::exposition::Format::Text,
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    };
    for kind in ["http_status", "decode"] {
        let line =
            format!("devmetrics_source_scrapes_total{{source=\"spacelift\",result=\"{kind}\"}} 1");
        assert!(text.contains(&line), "{line} missing: {text}");
    }
    assert!(text.contains("upstream=\"spacelift\",endpoint=\"usage\",status=\"200\""));
    assert!(text.contains(",status=\"503\"}"), "{text}");
}

/// The replaced exporter's documented `{state, stack, space}`: per stack when the listing is
/// complete, account-wide (stack and space empty) when Spacelift keeps stacks from the key or
/// filters leave some out, with the same `sum by (state)`; a listing refused after a complete
/// one never leaves both forms shown (`by_state` fails on a mix).
#[tokio::test]
async fn counts_by_state_are_per_stack_when_every_stack_is_listed() {
    let rig = Rig::new(12, |_| {}).await;
    let s = rig.poll().await;
    let (states, per_stack) = by_state(&s, "spacelift_current_stacks_count_by_state");
    assert!(per_stack, "a complete listing gives one series per stack");
    assert_eq!(
        count(&s, "spacelift_current_stacks_count_by_state"),
        rig.fake.sim.account().stacks.len()
    );
    assert_eq!(states, rig.fake.sim.account().stacks_count_by_state());

    // Stacks refused to the key (Spacelift's machine-session gate): account-wide.
    rig.fake.sim.gate_stacks(true);
    let s = rig.poll().await;
    let (states, per_stack) = by_state(&s, "spacelift_current_stacks_count_by_state");
    assert!(!per_stack);
    assert_eq!(states, rig.fake.sim.account().stacks_count_by_state());

    // Filters leave stacks out: account-wide, so the totals stay whole.
    let filtered = Rig::new(12, |c| c.stacks.exclude_stacks = vec!["Stack 1".into()]).await;
    let s = filtered.poll().await;
    let (states, per_stack) = by_state(&s, "spacelift_current_stacks_count_by_state");
    assert!(!per_stack);
    assert_eq!(states, filtered.fake.sim.account().stacks_count_by_state());
}

/// A stacks cursor that never ends fails the stacks group at once (the pages already read
/// are not shown as all the stacks): the other groups are unaffected, the stacks keep their
/// last values, and once Spacelift behaves the next poll matches the account again.
#[tokio::test]
async fn a_looping_stacks_cursor_fails_the_group_and_keeps_the_last_values() {
    let rig = Rig::new(40, |c| c.stacks.page_size = 7).await;
    let s = rig.poll().await;
    assert_matches(&s, &rig.fake.sim.account());
    let stacks = count(&s, "spacelift_stack_state");
    assert!(stacks > 7, "{stacks} stacks fill more than one page");
    rig.fake.sim.looping_cursor.store(true, Ordering::Relaxed);
    let s = tokio::time::timeout(Duration::from_secs(30), rig.poll())
        .await
        .expect("a looping cursor ends the poll");
    for g in spacelift::Group::ALL {
        let ok = collector(&s, "spacelift_scrape_collector_success", g.collector());
        let want = if g == spacelift::Group::Stacks {
            0.0
        } else {
            1.0
        };
        assert_eq!(ok, Some(want), "{}", g.collector());
    }
    assert_eq!(count(&s, "spacelift_stack_state"), stacks);
    rig.fake.sim.looping_cursor.store(false, Ordering::Relaxed);
    let s = rig.poll().await;
    assert!(rig.source_up());
    assert_matches(&s, &rig.fake.sim.account());
}
