//! Durable webhook ingest: signed ~10 KB `workflow_job` deliveries posted to the real
//! service (receiver → SQLite queue with group commit → 202) over 1, 16 and 64 keep-alive
//! connections. Prints accepted deliveries/s and p50/p99 latency per level; the figures go in
//! docs/performance.md. Run: `cargo bench --bench webhook_ingest` (release).
//!
//! Environment: `INGEST_SECONDS` per level (default 10), `INGEST_LEVELS` (default 1,16,64),
//! `INGEST_DIR` for the database (default a temp dir; put it on the disk you measure),
//! `INGEST_CONSUMERS` (default 4; 0 measures receiving without processing), `INGEST_STORE=redis`
//! for the Redis store on 127.0.0.1:6379 (the queue stays in the local file),
//! `INGEST_PIN=0` lets the service and the load generator share every core (pinned by
//! default: service on core 0, generator on core 1), `INGEST_QUEUE=rabbitmq` for the queue on the RabbitMQ at 127.0.0.1:5672 (guest/guest) or
//! `INGEST_QUEUE=redis` for Redis streams, each under a throwaway prefix. After the
//! levels it waits for the queue to drain and prints the processing rate over the whole run.

use devmetrics::sim::webhooks::{Generator, signature};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret";

fn main() {
    // `INGEST_PIN=1` (the default on a machine with two cores or more) pins the service —
    // every thread it starts inherits this one's affinity — to core 0 and the load generator
    // to core 1, so one core's worth of service is measured, as with `taskset` and `wrk`.
    if pinned() {
        pin_to(0);
    }
    // The service gets the runtime `serve` would have: one worker per core it may use.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let secs: u64 = std::env::var("INGEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let levels: Vec<usize> = std::env::var("INGEST_LEVELS")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("INGEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "DEVMETRICS_STORAGE__PATH".into(),
        dir.join("ingest.db").display().to_string(),
    );
    env.insert("DEVMETRICS_WEBHOOKS__GITHUB__SECRET".into(), SECRET.into());
    env.insert("DEVMETRICS_LOG__LEVEL".into(), "warn".into());
    // INGEST_CONSUMERS=0 measures receiving alone; by default deliveries are also processed.
    if let Ok(n) = std::env::var("INGEST_CONSUMERS") {
        env.insert("DEVMETRICS_WEBHOOKS__GITHUB__CONSUMERS".into(), n);
    }
    if std::env::var("INGEST_STORE").is_ok_and(|s| s == "redis") {
        env.insert("DEVMETRICS_STORAGE__BACKEND".into(), "redis".into());
        env.insert(
            "DEVMETRICS_STORAGE__REDIS__URL".into(),
            "redis://127.0.0.1:6379/0".into(),
        );
        env.insert(
            "DEVMETRICS_STORAGE__REDIS__KEY_PREFIX".into(),
            format!("devmetrics-bench-{}", std::process::id()),
        );
    }
    let prefix = format!("devmetrics-bench-{}", std::process::id());
    match std::env::var("INGEST_QUEUE").as_deref() {
        Ok("rabbitmq") => {
            env.insert("DEVMETRICS_QUEUE__BACKEND".into(), "rabbitmq".into());
            env.insert(
                "DEVMETRICS_QUEUE__RABBITMQ__URL".into(),
                "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            );
            env.insert("DEVMETRICS_QUEUE__RABBITMQ__PREFIX".into(), prefix.clone());
            env.insert(
                "DEVMETRICS_QUEUE__RABBITMQ__TEST_QUEUE_EXPIRY".into(),
                "5m".into(),
            );
        }
        Ok("redis") => {
            env.insert("DEVMETRICS_QUEUE__BACKEND".into(), "redis".into());
            env.insert(
                "DEVMETRICS_QUEUE__REDIS__URL".into(),
                "redis://127.0.0.1:6379/0".into(),
            );
            env.insert("DEVMETRICS_QUEUE__REDIS__KEY_PREFIX".into(), prefix.clone());
        }
        _ => {}
    }
    let cfg = devmetrics::config::load(None, &env, &Default::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let launched = devmetrics::app::launch(cfg, vec![listener], shutdown.clone())
        .await
        .unwrap();
    let url = format!("http://{}/webhooks/github", launched.addrs[0]);

    // Pre-generated and pre-signed, so the load generator spends its CPU on HTTP only.
    let mut g = Generator::new(42);
    let bodies: Vec<(bytes::Bytes, String)> = (0..512)
        .map(|i| {
            let plan = g.run_plan(1_700_000_000.0 + i as f64, 1).remove(0);
            let b = g.job_payload(&plan, "completed", false);
            let s = signature(SECRET, &b);
            (bytes::Bytes::from(b), s)
        })
        .collect();
    let avg = bodies.iter().map(|b| b.0.len()).sum::<usize>() / bodies.len();
    let bodies = Arc::new(bodies);
    println!("payload: {avg} bytes on average (signed workflow_job, completed)");
    println!(
        "service on {}, load generator on {}",
        if pinned() { "core 0" } else { "every core" },
        if pinned() { "core 1" } else { "every core" }
    );
    println!(
        "| connections | accepted/s | processed/s | backlog at end | p50 ms | p99 ms | non-202 | service CPU µs/delivery | load generator CPU µs/delivery |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let queue = launched.state.queue.clone();
    let addr = launched.addrs[0];
    let run_started = Instant::now();
    let mut seq = 0u64;
    for c in levels {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let base = seq;
        seq += 1_000_000_000;
        let bodies = bodies.clone();
        // The load runs on its own thread and runtime, like an external tool would, with a
        // minimal HTTP/1.1 client (pre-rendered requests on keep-alive connections) so the
        // generator costs little next to the service.
        let cpu_before = cpu_seconds();
        let before = topic_stats(&queue).await;
        let (lat, bad, elapsed, loadgen_cpu) = std::thread::Builder::new()
            .name("loadgen".into())
            .spawn(move || {
                if pinned() {
                    pin_to(1);
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let out = rt.block_on(async move {
                    let started = Instant::now();
                    let mut tasks = Vec::new();
                    for conn in 0..c {
                        let bodies = bodies.clone();
                        let first = base + conn as u64 * 10_000_000;
                        tasks.push(tokio::spawn(connection(addr, bodies, first, deadline)));
                    }
                    let mut lat = Vec::new();
                    let mut bad = 0;
                    for t in tasks {
                        let (l, b) = t.await.unwrap();
                        lat.extend(l);
                        bad += b;
                    }
                    (lat, bad, started.elapsed().as_secs_f64())
                });
                (out.0, out.1, out.2, thread_cpu_seconds())
            })
            .unwrap()
            .join()
            .unwrap();
        let cpu_after = cpu_seconds();
        let after = topic_stats(&queue).await;
        let mut lat = lat;
        lat.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] * 1000.0;
        let n = lat.len() as f64;
        // Work done over the level: what was accepted, or what was processed when the
        // consumers fell behind (their catch-up after the level is not counted here).
        let work = n.max((after.acked - before.acked) as f64);
        println!(
            "| {c} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {bad} | {:.0} | {:.0} |",
            n / elapsed,
            (after.acked - before.acked) as f64 / elapsed,
            after.depth,
            q(0.50),
            q(0.99),
            (cpu_after - cpu_before) / work * 1e6,
            loadgen_cpu / n * 1e6,
        );
    }
    if std::env::var("INGEST_CONSUMERS").as_deref() != Ok("0") {
        // The backlog left by the levels is drained with nothing else running: the CPU it
        // takes is processing's cost alone.
        let (drain_cpu, drain_from) = (cpu_seconds(), topic_stats(&queue).await.acked);
        loop {
            let st = topic_stats(&queue).await;
            if st.depth == 0 && st.acked == st.published {
                println!(
                    "processed: {} deliveries drained {:.1} s after the first, {:.0}/s",
                    st.acked,
                    run_started.elapsed().as_secs_f64(),
                    st.acked as f64 / run_started.elapsed().as_secs_f64()
                );
                if st.acked > drain_from + 1000 {
                    println!(
                        "draining the backlog alone: {} deliveries, service CPU {:.0} µs per delivery",
                        st.acked - drain_from,
                        (cpu_seconds() - drain_cpu) / (st.acked - drain_from) as f64 * 1e6
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The database writer's view: how many deliveries shared each fsync, and how long a
    // commit took.
    let text = reqwest::get(url.replace("/webhooks/github", "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let commits = value("devmetrics_store_commit_duration_seconds_count");
    // The Redis store reports no commits of its own.
    if commits.is_nan() {
        shutdown.cancel();
        launched.wait().await;
        return;
    }
    println!(
        "commits: {commits}, mean {:.2} ms, mean batch {:.1} writes",
        value("devmetrics_store_commit_duration_seconds_sum") / commits * 1000.0,
        value("devmetrics_store_commit_batch_size_sum")
            / value("devmetrics_store_commit_batch_size_count"),
    );
    shutdown.cancel();
    launched.wait().await;
}

/// One keep-alive connection sending deliveries back to back until `deadline`; returns the
/// latencies of the 202s and the count of anything else.
async fn connection(
    addr: std::net::SocketAddr,
    bodies: Arc<Vec<(bytes::Bytes, String)>>,
    first: u64,
    deadline: Instant,
) -> (Vec<f64>, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut lat = Vec::new();
    let mut bad = 0u64;
    let mut buf = vec![0u8; 4096];
    let mut i = 0u64;
    while Instant::now() < deadline {
        let (body, sig) = &bodies[((first + i) % bodies.len() as u64) as usize];
        let mut req = format!(
            "POST /webhooks/github HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             x-github-event: workflow_job\r\nx-github-delivery: bench-{}\r\n\
             x-hub-signature-256: {sig}\r\ncontent-length: {}\r\n\r\n",
            first + i,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let t = Instant::now();
        if stream.write_all(&req).await.is_err() {
            bad += 1;
            break;
        }
        // Reads one response: headers, then content-length bytes of body.
        let mut have = 0;
        let (status, need) = loop {
            let n = stream.read(&mut buf[have..]).await.unwrap_or(0);
            if n == 0 {
                return (lat, bad + 1);
            }
            have += n;
            if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
                let status = head.get(9..12).unwrap_or("").to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                break (status, end + 4 + len);
            }
        };
        while have < need {
            let n = stream.read(&mut buf[have..]).await.unwrap_or(0);
            if n == 0 {
                return (lat, bad + 1);
            }
            have += n;
        }
        if status == "202" {
            lat.push(t.elapsed().as_secs_f64());
        } else {
            bad += 1;
        }
        i += 1;
    }
    (lat, bad)
}

/// The webhook topic's counts.
async fn topic_stats(queue: &devmetrics::queue::SharedQueue) -> devmetrics::queue::TopicStats {
    let topic = devmetrics::queue::topics::GITHUB_WEBHOOKS;
    queue
        .stats()
        .await
        .unwrap()
        .into_iter()
        .find(|(t, _)| t == topic)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

/// Decided once, before pinning narrows what `available_parallelism` sees.
fn pinned() -> bool {
    static PINNED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PINNED.get_or_init(|| match std::env::var("INGEST_PIN").as_deref() {
        Ok("0") => false,
        Ok(_) => true,
        Err(_) => std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
    })
}

/// Pins the calling thread (and every thread it starts afterwards) to one core.
fn pin_to(core: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it, and
    // sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning to core {core}"
        );
    }
}

fn ticks(stat: &str) -> f64 {
    // utime and stime are fields 14 and 15; the comm (field 2) may contain spaces.
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
    rest.get(11..13)
        .map(|f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum::<f64>() / 100.0)
        .unwrap_or(0.0)
}

/// CPU seconds of every live thread of this process except the load generator's.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter(|s| !s.contains("(loadgen)"))
        .map(|s| ticks(&s))
        .sum()
}

/// CPU seconds of the calling thread.
fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .map(|s| ticks(&s))
        .unwrap_or(f64::NAN)
}
