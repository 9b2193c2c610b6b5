//! The github section, and github-stats-exporter's configs loading as they are.

use super::*;

/// github-stats-exporter's own config files load unchanged, honour their keys, and warn once
/// per replaced mechanism.
#[test]
fn replaced_tool_configs_load_as_they_are() {
    let Some(dir) = devmetrics::sim::research_dir("seed0/config") else {
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 7);
    for f in files {
        let cfg = devmetrics::config::load(Some(&f), &Default::default(), &Default::default())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let gh = cfg.github.as_ref().expect("github section");
        assert!(!gh.orgs.is_empty());
        assert_eq!(
            cfg.web.listen_addresses[0].port(),
            8080,
            "server.listen_addr honoured"
        );
        assert!(
            gh.compat_warnings.iter().any(|w| w.contains("amqp")),
            "{}: {:?}",
            f.display(),
            gh.compat_warnings
        );
        let text = std::fs::read_to_string(&f).unwrap();
        if text.contains("url: \"amqp://") {
            assert!(
                matches!(
                    cfg.queue.backend,
                    devmetrics::config::QueueBackend::RabbitMq
                ),
                "{}: its broker is kept",
                f.display()
            );
        }
        if text.contains("min_remaining_threshold: 200") {
            assert_eq!(gh.rate_limit.reserve, 200);
        }
        if text.contains("unhealthy_failure_threshold: 6") {
            assert_eq!(gh.unhealthy_failure_threshold, 6);
        }
        // Its HA settings map: a standalone Redis store stays a Redis store, a Sentinel one
        // reaches its master through the same Sentinels, the lease duration becomes ours.
        if f.ends_with("docs-complete-example.yaml") {
            use devmetrics::config::StorageBackend;
            assert_eq!(cfg.storage.backend, StorageBackend::Redis);
            let redis = cfg.storage.redis.as_ref().unwrap();
            assert_eq!(redis.url.expose(), "redis://redis:6379/0");
            assert_eq!(cfg.ha.lease_ttl, Duration::from_secs(30));
        }
        if f.ends_with("kustomize-prod-config.yaml") {
            use devmetrics::config::StorageBackend;
            assert_eq!(cfg.storage.backend, StorageBackend::Redis);
            let sentinel = cfg
                .storage
                .redis
                .as_ref()
                .unwrap()
                .sentinel
                .as_ref()
                .unwrap();
            assert_eq!(sentinel.master_name, "mymaster");
            assert_eq!(
                sentinel.urls[0].expose(),
                "redis://redis-sentinel.github-stats-exporter.svc.cluster.local:26379"
            );
            assert_eq!(gh.orgs.len(), 2);
            assert_eq!(gh.orgs[1].org, "org-b");
            assert_eq!(gh.orgs[0].concurrency, 8);
            assert_eq!(gh.activity.series_budget_per_org, 20_000_000);
            assert_eq!(gh.retry.max_attempts, 7);
            assert_eq!(gh.backfill.consumer_count, 6);
        }
        if f.ends_with("test-defaults-partial.yaml") {
            assert_eq!(gh.activity.series_budget_per_org, 100);
            assert_eq!(cfg.log_level, "info");
        }
        if f.ends_with("kustomize-nonprod-config.yaml") {
            assert_eq!(cfg.log_level, "debug");
            assert_eq!(gh.orgs[0].scrape_interval, Duration::from_secs(600));
        }
    }
}

/// The commented github section of `config example` is valid once uncommented.
#[test]
fn example_github_section_loads() {
    let text: String = devmetrics::config::EXAMPLE
        .lines()
        .skip_while(|l| !l.starts_with("#github:"))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.strip_prefix('#').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.starts_with("github:"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gh.yaml");
    std::fs::write(&path, text).unwrap();
    let cfg = devmetrics::config::load(Some(&path), &Default::default(), &Default::default())
        .expect("example github section loads");
    let gh = cfg.github.unwrap();
    assert_eq!(gh.orgs[0].org, "my-org");
    assert!(gh.compat_warnings.is_empty());
}
