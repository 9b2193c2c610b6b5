//! Apply latency of workflow deliveries while 100,000 workflow series are scraped back to
//! back, with the series split per repository (as stored) and, for comparison, all in one
//! scope (the layout before the split).
//!
//! Run: `cargo bench --bench workflow_apply` (`APPLY_N` deliveries per case, default 2,000).
//! A scrape holds every scope's `Arc` while it renders; a write to a scope a scrape holds
//! copies that scope, so with one scope each apply copied all 100,000 series.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use devmetrics::exposition::{Format, render};
use devmetrics::metrics::{self, Labels, Op, Update};
use devmetrics::processors::workflows::{self, Options, repo_scope};
use devmetrics::sim::webhooks::Generator;
use devmetrics::store::{Batch, Store, sqlite::SqliteStore};

const REPOS: usize = 1_000;
const SERIES_PER_REPO: usize = 100;

async fn preload(store: &SqliteStore, one_scope: bool) {
    let fid = metrics::DEVMETRICS_WORKFLOW_JOBS_TOTAL;
    for r in 0..REPOS {
        let repo = format!("org/repo-{r:04}");
        let updates = (0..SERIES_PER_REPO)
            .map(|j| Update {
                family: fid,
                labels: Labels::new(
                    fid,
                    &[
                        repo.as_str(),
                        "CI",
                        &format!("job-{j}"),
                        "",
                        "success",
                        "Default",
                        "ubuntu-latest",
                    ],
                )
                .unwrap(),
                op: Op::Inc(1.0),
            })
            .collect();
        let scope = if one_scope {
            workflows::SCOPE.to_string()
        } else {
            repo_scope(&repo)
        };
        store
            .apply_each_once(vec![Batch {
                key: format!("preload/{r}"),
                scope,
                updates,
            }])
            .await
            .unwrap();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn case(one_scope: bool, scraping: bool, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = devmetrics::db::Db::open(&dir.path().join("b.db")).unwrap();
    let store = Arc::new(SqliteStore::open(db).unwrap());
    preload(&store, one_scope).await;
    assert_eq!(store.state().series_count(), REPOS * SERIES_PER_REPO);

    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scraper = scraping.then(|| {
        let (store, stop, scrapes) = (store.clone(), stop.clone(), scrapes.clone());
        std::thread::spawn(move || {
            let mut out = Vec::with_capacity(16 << 20);
            while !stop.load(Ordering::Relaxed) {
                out.clear();
                let snap = store.snapshot();
                render(&snap.scopes, Format::Text, &mut out).unwrap();
                scrapes.fetch_add(1, Ordering::Relaxed);
            }
        })
    });

    let mut g = Generator::new(7);
    let opts = Options::default();
    let mut lat = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let mut plan = g.run_plan(1_700_000_000.0 + i as f64, 1).remove(0);
        plan.repo = format!("org/repo-{:04}", i % REPOS);
        plan.job_id = 10_000_000 + i as u64;
        let body = g.job_payload(&plan, "completed", false);
        let mut batches = workflows::process("workflow_job", &body, &opts).unwrap();
        if one_scope {
            for b in &mut batches {
                b.scope = workflows::SCOPE.to_string();
            }
        }
        let t = Instant::now();
        store.apply_each_once(batches).await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = scraper {
        s.join().unwrap();
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{:<22} {:<12} applies {:>5}  p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.2} ms  {:>6.0}/s  scrapes {}",
        if one_scope {
            "one scope (before)"
        } else {
            "scope per repository"
        },
        if scraping { "scraping" } else { "no scrapes" },
        n,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
        n as f64 / wall.as_secs_f64(),
        scrapes.load(Ordering::Relaxed),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("workflow_apply: bench");
        return;
    }
    let n: usize = std::env::var("APPLY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{} workflow series over {REPOS} repositories; {n} completed-job deliveries applied one after another",
        REPOS * SERIES_PER_REPO
    );
    for one_scope in [false, true] {
        for scraping in [false, true] {
            rt.block_on(case(one_scope, scraping, n));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
