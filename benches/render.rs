//! `/metrics` render time and peak RSS for 10k, 100k and 1M series with labels
//! {org, repo, user}, in both formats, through the real HTTP server.
//!
//! Run: `cargo bench --bench render` (all sizes) or `cargo bench --bench render -- 1000000`;
//! `RENDER_FORMATS=text+gzip,startup` picks formats; `RENDER_SHAPE=activity` shapes the
//! series as GitHub activity does (a user's label set shared by four families).
//! Each (size, format) runs in a fresh child process so its peak RSS (VmHWM) is its own. The
//! figure covers the whole exporter process: SQLite store, in-memory state and the scrape.
//!
//! Formats `text` and `openmetrics` are scraped without compression; `text+gzip` and
//! `openmetrics+gzip` with `Accept-Encoding: gzip` as Prometheus scrapes: the first scrape is
//! cold (every scope compressed), the next four reuse the kept parts, and a last one follows a
//! change of 1 % of the scopes. `startup` writes the series into a store file in one child and
//! times another child from launch to `/readyz` answering 200 on that file.
//!
//! `RENDER_STORE=redis` measures a replica of the Redis store on 127.0.0.1:6379 instead: one
//! child process writes the series into a throwaway key prefix, then each (size, format)
//! child starts a replica on it (its start-up loads the mirror from Redis, timed as `load`)
//! and scrapes it; the prefix is deleted afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devmetrics::metrics::Sample;
use devmetrics::metrics::{self, Labels};
use devmetrics::store::Store;

const REPOS_PER_ORG: usize = 100;
const USERS_PER_SCOPE: usize = 100;

/// The 100 series of scope `s`. `RENDER_SHAPE=activity` makes them as GitHub activity does:
/// 25 users, each in four families (commits, last event, lines added and removed) sharing
/// one label set; otherwise (the default) 100 users in one family, every label set distinct.
fn scope_samples(org: &str, repo: &str, s: usize, value: impl Fn(usize) -> f64) -> Vec<Sample> {
    let user = |u: usize| format!("user-{:06}", (s * 7 + u) % 200_000);
    if std::env::var("RENDER_SHAPE").as_deref() == Ok("activity") {
        let fids = [
            metrics::GH_ACTIVITY_COMMITS_24H,
            metrics::GH_ACTIVITY_LAST_EVENT_UNIXTIME,
            metrics::GH_ACTIVITY_LOC_ADDED_WEEKLY,
            metrics::GH_ACTIVITY_LOC_REMOVED_WEEKLY,
        ];
        return (0..USERS_PER_SCOPE / fids.len())
            .flat_map(|u| {
                let labels = Labels::new(fids[0], &[org, repo, &user(u)]).unwrap();
                let v = value(u);
                fids.map(|fid| Sample::number(fid, labels.clone(), v))
            })
            .collect();
    }
    let fid = family();
    (0..USERS_PER_SCOPE)
        .map(|u| {
            Sample::number(
                fid,
                Labels::new(fid, &[org, repo, &user(u)]).unwrap(),
                value(u),
            )
        })
        .collect()
}

fn family() -> metrics::FamilyId {
    metrics::GH_ACTIVITY_COMMITS_24H
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

async fn child(series: usize, format: &str, redis_prefix: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    // `startup-fill <path>` writes the store a later `startup-open <path>` opens.
    let db_path = match format {
        "startup-fill" | "startup-open" => std::path::PathBuf::from(redis_prefix.unwrap()),
        _ => dir.path().join("b.db"),
    };
    let redis_prefix = redis_prefix.filter(|_| !format.starts_with("startup"));
    let mut o = devmetrics::config::Overrides::default();
    if let Some(prefix) = redis_prefix {
        o.set("storage.backend", "redis".into(), "bench");
        o.set("storage.redis.url", REDIS_URL.into(), "bench");
        o.set("storage.redis.key_prefix", prefix.into(), "bench");
    }
    o.set(
        "storage.path",
        db_path.display().to_string().into(),
        "bench",
    );
    o.set("web.listen_addresses", "127.0.0.1:0".into(), "bench");
    o.set("log.level", "warn".into(), "bench");
    let cfg = devmetrics::config::load(None, &Default::default(), &o).unwrap();
    let listeners = devmetrics::app::bind(&cfg).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let load_started = Instant::now();
    let launched = devmetrics::app::launch(cfg, listeners, shutdown.clone())
        .await
        .unwrap();
    let addr = launched.addrs[0];
    if format == "startup-open" {
        let client = reqwest::Client::new();
        loop {
            let ok = client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready = load_started.elapsed();
        let held = launched
            .state
            .store
            .snapshot()
            .scopes
            .iter()
            .map(|s| s.series_count())
            .sum::<usize>();
        assert!(held >= series, "started with {held} of {series} series");
        println!(
            "{series:>9} series  start-up to ready {:>7.0} ms  peak RSS {:>6.1} MB",
            ms(ready),
            vm_hwm_kib() as f64 / 1024.0
        );
        shutdown.cancel();
        launched.wait().await;
        return;
    }
    let store = launched.state.store.clone();
    if redis_prefix.is_some() && format != "load" {
        // A replica: its start-up loaded every series Redis holds.
        let held = store
            .snapshot()
            .scopes
            .iter()
            .map(|s| s.series_count())
            .sum::<usize>();
        assert!(
            held >= series,
            "the replica holds {held} of {series} series"
        );
        scrape(addr, series, format, load_started.elapsed().as_secs_f64()).await;
        shutdown.cancel();
        launched.wait().await;
        return;
    }
    let scopes = series.div_ceil(USERS_PER_SCOPE);
    let load_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let store: Arc<dyn Store> = store;
    for s in 0..scopes {
        let store = store.clone();
        tasks.spawn(async move {
            let org = format!("org-{:02}", s / REPOS_PER_ORG);
            let repo = format!("repo-{:05}", s);
            let samples = scope_samples(&org, &repo, s, |u| (u % 17) as f64);
            store
                .replace_scope(&format!("bench/{org}/{repo}"), samples)
                .await
                .unwrap();
        });
        if tasks.len() >= 64 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    let load_secs = load_started.elapsed().as_secs_f64();
    if format == "load" {
        println!("{series:>9} series written to Redis in {load_secs:.1} s");
    } else if format == "startup-fill" {
        println!("{series:>9} series written to the store file in {load_secs:.1} s");
    } else if format.ends_with("+gzip") {
        scrape_gzip(addr, series, format, load_secs, &store).await;
    } else {
        scrape(addr, series, format, load_secs).await;
    }
    shutdown.cancel();
    launched.wait().await;
}

async fn scrape(addr: std::net::SocketAddr, series: usize, format: &str, load_secs: f64) {
    let accept = match format {
        "openmetrics" => "application/openmetrics-text;version=1.0.0",
        _ => "text/plain;version=0.0.4",
    };
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let mut times = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..5 {
        let started = Instant::now();
        let mut resp = client
            .get(format!("http://{addr}/metrics"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        bytes = 0;
        // Stream and discard: the scraper must not inflate this process's RSS.
        while let Some(chunk) = resp.chunk().await.unwrap() {
            bytes += chunk.len();
        }
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "{series:>9} series  {format:<11}  render+transfer min {:>8.1} ms  median {:>8.1} ms  body {:>6.1} MB  peak RSS {:>6.1} MB  (load {load_secs:.1} s)",
        ms(times[0]),
        ms(times[2]),
        bytes as f64 / 1e6,
        vm_hwm_kib() as f64 / 1024.0,
    );
}

/// Scrapes as Prometheus does (`Accept-Encoding: gzip`): cold, cached, then after 1 % of the
/// scopes changed. The body is checked to inflate as one gzip member into every series.
async fn scrape_gzip(
    addr: std::net::SocketAddr,
    series: usize,
    format: &str,
    load_secs: f64,
    store: &Arc<dyn Store>,
) {
    let accept = match format {
        "openmetrics+gzip" => "application/openmetrics-text;version=1.0.0",
        _ => "text/plain;version=0.0.4",
    };
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let get = || async {
        let started = Instant::now();
        let body = client
            .get(format!("http://{addr}/metrics"))
            .header("accept", accept)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        (started.elapsed(), body)
    };
    let (cold, body) = get().await;
    let mut lines = 0usize;
    let mut reader = std::io::BufReader::new(flate2::read::GzDecoder::new(&body[..]));
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0 {
        if line.starts_with("gh_activity_") && line.contains('{') {
            lines += 1;
        }
        line.clear();
    }
    assert_eq!(lines, series, "the gzip body inflates into every series");
    let mut cached = Vec::new();
    for _ in 0..4 {
        cached.push(get().await.0);
    }
    cached.sort();
    let scopes = series.div_ceil(USERS_PER_SCOPE);
    for s in (0..scopes).step_by(100) {
        let org = format!("org-{:02}", s / REPOS_PER_ORG);
        let repo = format!("repo-{:05}", s);
        let samples = scope_samples(&org, &repo, s, |_| 99.0);
        store
            .replace_scope(&format!("bench/{org}/{repo}"), samples)
            .await
            .unwrap();
    }
    let (changed, _) = get().await;
    println!(
        "{series:>9} series  {format:<16}  cold {:>7.1} ms  cached min {:>6.1} ms  median {:>6.1} ms  1 % changed {:>6.1} ms  body {:>5.1} MB  peak RSS {:>6.1} MB  (load {load_secs:.1} s)",
        ms(cold),
        ms(cached[0]),
        ms(cached[1]),
        ms(changed),
        body.len() as f64 / 1e6,
        vm_hwm_kib() as f64 / 1024.0,
    );
}

/// Deletes every key under `prefix` (the hash tag the store puts around it included).
fn delete_prefix(prefix: &str) {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut c = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}*"))
        .query(&mut c)
        .unwrap();
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("UNLINK").arg(chunk).query(&mut c).unwrap();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let series: usize = args[1].parse().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(series, &args[2], args.get(3).map(String::as_str)));
        return;
    }
    let redis = std::env::var("RENDER_STORE").is_ok_and(|s| s == "redis");
    let sizes: Vec<usize> = if args.is_empty() {
        vec![10_000, 100_000, 1_000_000]
    } else {
        args.iter().filter_map(|a| a.parse().ok()).collect()
    };
    println!("family {}", metrics::family(family()).name);
    for size in sizes {
        let prefix = format!("devmetrics-bench-render-{}-{size}", std::process::id());
        let mut formats = vec![
            "text",
            "openmetrics",
            "text+gzip",
            "openmetrics+gzip",
            "startup-fill",
            "startup-open",
        ];
        if let Ok(only) = std::env::var("RENDER_FORMATS") {
            formats.retain(|f| only.split(',').any(|o| o == *f || f.starts_with(o)));
        }
        if redis {
            formats.retain(|f| !f.starts_with("startup"));
            formats.insert(0, "load");
        }
        let startup_dir = tempfile::tempdir().unwrap();
        let startup_db = startup_dir.path().join("startup.db").display().to_string();
        for format in formats {
            let mut args = vec!["--child".to_string(), size.to_string(), format.to_string()];
            if redis {
                args.push(prefix.clone());
            } else if format.starts_with("startup") {
                args.push(startup_db.clone());
            }
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(&args)
                .status()
                .unwrap();
            assert!(status.success());
        }
        if redis {
            delete_prefix(&prefix);
        }
    }
}
