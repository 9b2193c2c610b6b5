//! Mutation fuzzing, bounded for CI: every parser of outside input is fed its real examples
//! (`../shared/research-data`, and the repository's own configs) mutated many ways (bit flips,
//! cuts, splices, repeated runs, JSON-hostile bytes, extreme numbers), and must parse or refuse
//! without panicking. A panic saves its input under `target/fuzz-failures/` to replay.
//! `DEVMETRICS_FUZZ_ITERATIONS` (per seed, default 300) lengthens a run; longer runs are
//! recorded in `docs/reliability.md`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn iterations() -> usize {
    std::env::var("DEVMETRICS_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Every file under `dir` ending in one of `exts`.
fn seeds_in(dir: &Path, exts: &[&str], out: &mut Vec<Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            seeds_in(&p, exts, out);
        } else if exts.iter().any(|e| p.to_string_lossy().ends_with(e))
            && let Ok(b) = std::fs::read(&p)
            && b.len() < 2 * 1024 * 1024
        {
            out.push(b);
        }
    }
}

/// The research data's examples under `sub`; none on a fresh clone (the test says so, and
/// fails under `DEVMETRICS_REQUIRE_SHARED=1`).
fn research(sub: &str, exts: &[&str]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    match devmetrics::sim::research_dir(sub) {
        Some(dir) => seeds_in(&dir, exts, &mut out),
        None => {
            let msg = format!("research-data/{sub} not found");
            if std::env::var("DEVMETRICS_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
                panic!("{msg} and DEVMETRICS_REQUIRE_SHARED=1");
            }
            eprintln!("SKIPPED seeds: {msg}");
        }
    }
    out
}

const HOSTILE: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\0",
    b"\n",
    b"\\",
    b"\\u0000",
    b"null",
    b"-1",
    b"1e999",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"NaN",
    b"\xff\xfe",
    b"\"\xf0\x9f\x92\xa9\"",
    b"9999-99-99T99:99:99Z",
    b"{\"a\":",
    b"[[[[[[[[[[",
];

/// One mutation of `seed`.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = b.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        };
        match rng.random_range(0..7) {
            0 if len > 0 => b[at] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => {
                let end = (at + rng.random_range(1..64)).min(len);
                b.drain(at..end);
            }
            2 => {
                let h = HOSTILE[rng.random_range(0..HOSTILE.len())];
                b.splice(at..at, h.iter().copied());
            }
            3 if len > 0 => b.truncate(at),
            4 if len > 0 => {
                // A run repeated: deep nesting, long strings, many records.
                let end = (at + rng.random_range(1..32)).min(len);
                let run = b[at..end].to_vec();
                for _ in 0..rng.random_range(2..50) {
                    b.splice(at..at, run.iter().copied());
                }
            }
            5 if len > 0 => {
                // A number replaced by an extreme one.
                if let Some(i) = b[at..].iter().position(|c| c.is_ascii_digit()) {
                    let i = at + i;
                    let h = [&b"1e308"[..], b"-1", b"0.0000001", b"99999999999999999999"]
                        [rng.random_range(0..4)];
                    b.splice(i..i + 1, h.iter().copied());
                }
            }
            _ if len > 1 => {
                // A splice of two places.
                let from = rng.random_range(0..len);
                let end = (from + rng.random_range(1..128)).min(len);
                let run = b[from..end].to_vec();
                b.splice(at..at, run);
            }
            _ => b.push(rng.random()),
        }
    }
    b
}

/// Feeds `iterations()` mutations of each seed (and each seed itself) to `parse`; returns how
/// many inputs ran. A panic fails the test and saves its input.
fn fuzz(name: &str, seeds: &[Vec<u8>], iterations: usize, parse: impl Fn(&[u8])) -> usize {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let mut rng = StdRng::seed_from_u64(0xf022 ^ name.len() as u64);
    let mut runs = 0;
    for seed in seeds {
        for i in 0..=iterations {
            let input = if i == 0 {
                seed.clone()
            } else {
                mutate(&mut rng, seed)
            };
            if catch_unwind(AssertUnwindSafe(|| parse(&input))).is_err() {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join(format!("{name}-{runs}.bin"));
                std::fs::write(&path, &input).unwrap();
                panic!("{name} panicked on the input saved in {}", path.display());
            }
            runs += 1;
        }
    }
    runs
}

#[test]
fn workflow_payloads() {
    let opts = devmetrics::processors::workflows::Options::default();
    let mut total = 0;
    for event in ["workflow_job", "workflow_run"] {
        let mut seeds = research(&format!("github-webhooks/{event}"), &[".json"]);
        // The simulator's own payloads, so a fresh clone fuzzes something.
        let mut g = devmetrics::sim::webhooks::Generator::new(3);
        let plans = g.run_plan(1_700_000_000.0, 2);
        seeds.push(g.job_payload(&plans[0], "completed", false));
        seeds.push(g.run_payload(&plans, "completed", false));
        total += fuzz(event, &seeds, iterations(), |b| {
            let _ = devmetrics::processors::workflows::process(event, b, &opts);
        });
    }
    eprintln!("workflow payloads: {total} inputs");
}

/// `sha256=<hex>` headers (GitHub's and Jira's) parsed and checked against a body: a header
/// either parses to a tag or is refused, and a mutated one never matches.
#[test]
fn webhook_signatures() {
    use devmetrics::sources::signature;
    let key = signature::key(&devmetrics::config::Secret::new("fuzz-secret"));
    let body = b"{\"action\":\"completed\"}";
    let good = devmetrics::sim::webhooks::signature("fuzz-secret", body);
    let seeds = vec![
        good.clone().into_bytes(),
        b"sha256=".to_vec(),
        format!("{good}{good}").into_bytes(),
    ];
    let total = fuzz("webhook signatures", &seeds, iterations() * 10, |h| {
        if let Some(tag) = signature::parse(h) {
            let matched = bool::from(signature::matches(&key, body, &tag));
            assert_eq!(
                matched,
                h.to_ascii_lowercase() == good.as_bytes(),
                "a forged signature matched"
            );
        }
    });
    eprintln!("webhook signatures: {total} inputs");
}

#[test]
fn jira_deliveries() {
    let mut seeds = research("jira-webhooks", &[".json"]);
    seeds.push(
        br#"{"webhookEvent":"jira:issue_updated","timestamp":1700000000000,"issue":{"key":"PAY-1","fields":{"created":"2026-01-01T10:00:00.000+0000","resolutiondate":"2026-01-01T12:00:00.000-0500","project":{"key":"PAY"},"issuetype":{"name":"Incident"},"labels":["sev1"],"priority":{"name":"High"}}}}"#.to_vec(),
    );
    let filter = devmetrics::sources::dora::config::IncidentFilter::default();
    let n = fuzz("jira", &seeds, iterations(), |b| {
        let _ = devmetrics::sources::dora::jira::event_name(b);
        let _ = devmetrics::sources::dora::jira::observe(b, 1_700_000_000.0, &filter);
    });
    eprintln!("jira deliveries: {n} inputs");
}

#[test]
fn copilot_reports_streamed_in_random_chunks() {
    let mut seeds = research("copilot", &[".json", ".ndjson"]);
    seeds.push(
        b"{\"day\":\"2026-04-01\",\"user_login\":\"a\",\"code_generation_activity_count\":3}\n"
            .to_vec(),
    );
    let n = fuzz("copilot", &seeds, iterations(), |b| {
        let mut r = devmetrics::sources::copilot::wire::Reader::new();
        // Cut where the network might: the reader must join lines across chunks.
        let mut at = 0;
        let mut step = 1 + b.len() % 97;
        while at < b.len() {
            let end = (at + step).min(b.len());
            r.feed(&b[at..end]);
            at = end;
            step = 1 + (step * 7) % 331;
        }
        let _ = r.finish();
    });
    eprintln!("Copilot reports: {n} inputs");
}

#[test]
fn dora_exporter_snapshots() {
    let mut seeds = research("dora/mprokopov-dora-exporter", &[".prom"]);
    seeds.push(b"# TYPE github_deployments_total counter\ngithub_deployments_total{repo=\"a\",environment=\"production\",team=\"T\",status=\"success\"} 3\n".to_vec());
    let n = fuzz("snapshot", &seeds, iterations(), |b| {
        let _ = devmetrics::sources::dora::snapshot::updates(&String::from_utf8_lossy(b));
    });
    eprintln!("dora-exporter snapshots: {n} inputs");
}

#[test]
fn queued_envelopes() {
    let e = devmetrics::processors::Envelope {
        event: "workflow_job".into(),
        delivery: "d-1".into(),
        received_at: 1_700_000_000.5,
        body: bytes::Bytes::from_static(b"{\"action\":\"completed\"}"),
    };
    let n = fuzz("envelope", &[e.encode().to_vec()], iterations() * 10, |b| {
        let _ = devmetrics::processors::Envelope::decode(&bytes::Bytes::copy_from_slice(b));
    });
    eprintln!("queued envelopes: {n} inputs");
}

#[test]
fn config_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = vec![devmetrics::config::EXAMPLE.as_bytes().to_vec()];
    seeds_in(&root.join("deploy/examples"), &[".yaml"], &mut seeds);
    // Uncommented, the example's optional sections are fuzzed too.
    let uncommented: String = devmetrics::config::EXAMPLE
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    seeds.push(uncommented.into_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    // Loading reads the file: fewer, costlier runs.
    let n = fuzz("config", &seeds, iterations() / 3, |b| {
        std::fs::write(&path, b).unwrap();
        let _ = devmetrics::config::load(Some(&path), &Default::default(), &Default::default());
    });
    eprintln!("config files: {n} inputs");
}

/// Spacelift's GraphQL answers, each decoded as every query's data and turned into samples;
/// GitHub's REST lists turned into a repo's events and its window's activity; GitHub's search
/// pages and GraphQL pull-request answers decoded.
#[test]
fn graphql_and_rest_answers() {
    use devmetrics::sources::github::{activity, wire as gh};
    use devmetrics::sources::spacelift::{self as sl, wire};
    let spacelift: Vec<Vec<u8>> = [
        r#"{"data":{"publicWorkerPool":{"parallelism":10,"busyWorkers":3,"pendingRuns":2}}}"#,
        r#"{"data":{"workerPools":[{"id":"01A","name":"pool-a","pendingRuns":1,"busyWorkers":2,"workers":[{"id":"w1","drained":false},{"id":"w2","drained":true}]}]}}"#,
        r#"{"data":{"usage":{"billingPeriodStart":1754000000,"billingPeriodEnd":1756678400,"usedPrivateMinutes":120,"usedPublicMinutes":30,"usedSeats":7}}}"#,
        r#"{"data":{"metrics":{"stacksCountByState":[{"value":3,"labels":["FINISHED"]}],"resourcesCountByDrift":[{"value":2,"labels":["drifted"]}],"needsApprovalRuns":[{"id":"r1"}],"runsRequiringAttention":[]}}}"#,
        r#"{"data":{"searchStacks":{"edges":[{"node":{"id":"s1","name":"Stack 1","space":"root","state":"FINISHED","runs":[{"type":"TRACKED","state":"FINISHED"}],"entities":[{"drifted":1754000000},{"drifted":null}]}}],"pageInfo":{"hasNextPage":false,"endCursor":null}}}}"#,
        r#"{"data":null,"errors":[{"message":"unauthorized"}]}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let stacks = devmetrics::sources::spacelift::config::StacksConfig {
        enabled: true,
        include_spaces: vec![],
        exclude_spaces: vec![],
        include_stacks: vec![],
        exclude_stacks: vec![],
        series_budget: 1000,
        page_size: 50,
    };
    let n = fuzz("spacelift_graphql", &spacelift, iterations(), |b| {
        type R<T> = wire::Response<T>;
        if let Ok(R { data: Some(d), .. }) =
            serde_json::from_slice::<R<wire::PublicWorkerPoolData>>(b)
        {
            sl::public_worker_pool_samples(&d.public_worker_pool);
        }
        if let Ok(R { data: Some(d), .. }) = serde_json::from_slice::<R<wire::WorkerPoolsData>>(b) {
            sl::worker_pool_samples(&d.worker_pools);
        }
        if let Ok(R { data: Some(d), .. }) = serde_json::from_slice::<R<wire::UsageData>>(b) {
            sl::usage_samples(&d.usage);
        }
        if let Ok(R { data: Some(d), .. }) = serde_json::from_slice::<R<wire::AggregatesData>>(b)
            && let Some(m) = d.metrics
        {
            sl::aggregate_samples(&m);
        }
        if let Ok(R { data: Some(d), .. }) = serde_json::from_slice::<R<wire::AttentionData>>(b)
            && let Some(m) = d.metrics
        {
            sl::attention_samples(&m);
        }
        if let Ok(R { data: Some(d), .. }) = serde_json::from_slice::<R<wire::StacksData>>(b) {
            let nodes: Vec<wire::StackNode> =
                d.search_stacks.edges.into_iter().map(|e| e.node).collect();
            sl::per_stack_counts(&nodes);
            sl::stack_samples(nodes, &stacks);
        }
    });

    let mut github = research("github-rest", &[".json"]);
    github.push(
        br#"{"total_count":2,"incomplete_results":false,"items":[{"repository_url":"https://api.github.com/repos/acme/a","updated_at":"2026-12-04T10:00:00Z"}]}"#.to_vec(),
    );
    github.push(
        br#"{"repository":{"pullRequests":{"pageInfo":{"hasNextPage":false,"endCursor":null},"nodes":[{"number":1,"createdAt":"2026-12-04T09:00:00Z","updatedAt":"2026-12-04T10:00:00Z","mergedAt":null,"author":{"__typename":"User","login":"a"},"reviews":{"pageInfo":{"hasNextPage":false},"nodes":[{"author":{"__typename":"Bot","login":"b"},"submittedAt":"2026-12-04T09:30:00Z","state":"APPROVED"}]}}]}}}"#.to_vec(),
    );
    let m = fuzz("github_answers", &github, iterations(), |b| {
        let commits: Vec<gh::Commit> = serde_json::from_slice(b).unwrap_or_default();
        let pulls: Vec<gh::Pull> = serde_json::from_slice(b).unwrap_or_default();
        let reviews: Vec<gh::Review> = serde_json::from_slice(b).unwrap_or_default();
        let comments: Vec<gh::IssueComment> = serde_json::from_slice(b).unwrap_or_default();
        let ev = activity::RepoEvents::from_wire(
            0,
            4_000_000_000,
            &commits,
            &pulls,
            &reviews,
            &comments,
        );
        activity::compute(&ev, None, 0, 4_000_000_000);
        let _ = serde_json::from_slice::<gh::SearchPage>(b);
        let _ = serde_json::from_slice::<gh::GqlRepoData>(b);
        let _ = serde_json::from_slice::<Vec<gh::Repo>>(b);
    });
    eprintln!("Spacelift GraphQL answers: {n} inputs; GitHub answers: {m} inputs");
}

/// `POST /api/deployments` (dora-exporter's API): every body is answered 2xx or 4xx, never
/// a panic or a 5xx.
#[test]
fn deployments_api_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let queue = rt.block_on(async {
        let b = crate::support::Backend::Sqlite
            .open(dir.path(), &devmetrics::queue::RetryPolicy::default())
            .await;
        b.queue
    });
    let api = devmetrics::sources::dora::api::DeploymentsApi::new(
        devmetrics::config::Secret::new("fuzz-token"),
        queue,
    );
    let seeds = vec![
        br#"{"id":"d-1","repo":"acme/pay","environment":"production","status":"success","sha":"abc123","team":"payments","created_at":"2026-12-04T10:00:00Z"}"#.to_vec(),
        br#"{"id":"d-2","repo":"acme/pay","environment":"staging","status":"failure"}"#.to_vec(),
    ];
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("authorization", "Bearer fuzz-token".parse().unwrap());
    // Each valid body is a durable publish: fewer, costlier runs.
    let n = fuzz("deployments_api", &seeds, iterations() / 3, |b| {
        let resp = rt.block_on(api.handle(&headers, bytes::Bytes::copy_from_slice(b)));
        let s = resp.status().as_u16();
        assert!(matches!(s, 200..=299 | 400..=499), "answered {s}");
    });
    eprintln!("deployments API bodies: {n} inputs");
}

/// The exporter-toolkit web config file (TLS, basic auth, HTTP/2, headers).
#[test]
fn web_config_files() {
    let seeds = vec![
        b"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS12\nhttp_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\nbasic_auth_users:\n  prometheus: $2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG\n".to_vec(),
        b"basic_auth_users:\n  alice: $2b$12$hNf2lSsxfm0.i4a.1kVpSOVyBCfIB51VRjgBUyv6kdnyTlgWj81Ay\n".to_vec(),
        b"".to_vec(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.yml");
    let n = fuzz("web_config", &seeds, iterations() / 3, |b| {
        std::fs::write(&path, b).unwrap();
        let _ = devmetrics::server::webconfig::load(&path);
    });
    eprintln!("web config files: {n} inputs");
}

/// Series as persisted in the embedded store, damaged: a store whose rows were altered (a
/// family renamed away, labels cut, histogram buckets garbled, values NaN) opens and serves
/// or refuses, never panics.
#[test]
fn persisted_store_records() {
    use devmetrics::metrics::{self, HistogramValue, Labels, Sample, Value};
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policy = devmetrics::queue::RetryPolicy::default();
    rt.block_on(async {
        let b = crate::support::Backend::Sqlite
            .open(dir.path(), &policy)
            .await;
        let h = metrics::DEVMETRICS_HTTP_REQUEST_DURATION_SECONDS;
        let mut hv = HistogramValue::new(metrics::family(h).buckets);
        hv.observe(metrics::family(h).buckets, 0.2);
        let c = metrics::GH_ACTIVITY_COMMITS_24H;
        b.store
            .replace_scope(
                "fuzz/a",
                vec![
                    Sample {
                        family: h,
                        labels: Labels::new(h, &["/x"]).unwrap(),
                        value: Value::Histogram(Box::new(hv)),
                    },
                    Sample::number(c, Labels::new(c, &["o", "r", "u\"\\n"]).unwrap(), 3.0),
                ],
            )
            .await
            .unwrap();
    });
    // The store's threads finish their last commit after it is dropped.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let db = dir.path().join("devmetrics.db");
    let rows: Vec<Vec<u8>> = {
        let c = rusqlite::Connection::open(&db).unwrap();
        let mut st = c
            .prepare("SELECT family || char(31) || labels || char(31) || coalesce(buckets, '') FROM series")
            .unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|r| r.unwrap().into_bytes())
            .collect()
    };
    let work = tempfile::tempdir().unwrap();
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let opened = std::sync::atomic::AtomicUsize::new(0);
    use std::sync::atomic::Ordering;
    let n = fuzz("store_records", &rows, iterations() / 10, |b| {
        let text = String::from_utf8_lossy(b);
        let mut parts = text.splitn(3, '\u{1f}');
        let (family, labels, buckets) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        // A directory per input: the last input's store may still hold its lock.
        let here = work
            .path()
            .join(format!("{}", runs.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&here).unwrap();
        for f in ["devmetrics.db", "devmetrics.db-wal", "devmetrics.db-shm"] {
            let _ = std::fs::copy(dir.path().join(f), here.join(f));
        }
        let copy = here.join("devmetrics.db");
        {
            let c = rusqlite::Connection::open(&copy).unwrap();
            c.execute(
                "INSERT OR REPLACE INTO series (scope, family, labels, value, buckets) VALUES ('fuzz/b', ?1, ?2, ?3, nullif(?4, ''))",
                rusqlite::params![family, labels, (b.len() as f64).sqrt() - 3.0, buckets],
            )
            .unwrap();
        }
        rt.block_on(async {
            // Refusing to open is an answer; a panic is not.
            let config = crate::support::config_with(&here, &[]);
            let Ok(b) = devmetrics::storage::open(&config).await else {
                return;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let snap = b.store.snapshot();
            let mut out = Vec::new();
            devmetrics::exposition::render(
                &snap.scopes,
                devmetrics::exposition::Format::Text,
                &mut out,
            )
            .unwrap();
        });
    });
    let opened = opened.load(Ordering::Relaxed);
    eprintln!("persisted store records: {n} inputs, {opened} stores opened");
    // Damaged rows are skipped, not fatal: most inputs still open.
    assert!(opened * 2 > n, "{opened} of {n} stores opened");
}
