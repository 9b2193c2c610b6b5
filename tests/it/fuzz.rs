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
