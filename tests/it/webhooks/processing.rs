//! Workflow deliveries in any order and duplicated count exactly once, against ground truth.

use super::*;

#[tokio::test]
async fn scenario_replays_every_workflow_example_in_any_order() {
    let Some(dir) = shared("github-webhooks") else {
        return;
    };
    let ex = examples(&dir);
    assert_eq!(ex.len(), 11);
    // Files sorted by name: completions come before in_progress and queued.
    let app = App::start(&[]).await;
    let order: Vec<usize> = (0..ex.len()).collect();
    replay(&app, &ex, &order, 0).await;
    assert_order_independent(&app);
    let hello = ("repo", "Codertocat/Hello-World");
    assert_eq!(
        app.sum(
            "devmetrics_workflow_jobs_total",
            &[
                hello,
                ("conclusion", "failure"),
                ("job", "linters"),
                ("workflow", "CodeQL")
            ]
        ),
        1.0
    );
    assert_eq!(
        app.hist("devmetrics_workflow_job_queue_duration_seconds", &[hello]),
        (1, 60.0)
    );
    app.stop().await;

    for seed in 1..=4u64 {
        let app = App::start(&[]).await;
        let mut order: Vec<usize> = (0..ex.len()).collect();
        use rand::seq::SliceRandom;
        order.shuffle(&mut devmetrics::sim::rng(seed));
        let reversed: Vec<usize> = order.iter().rev().copied().collect();
        replay(&app, &ex, &order, 1).await;
        replay(&app, &ex, &reversed, 2).await;
        assert_order_independent(&app);
        app.stop().await;
    }
}

#[tokio::test]
async fn generated_activity_matches_the_senders_ground_truth() {
    let app = App::start(&[]).await;
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(9);
    let mut n = 0;
    for r in 0..20 {
        let jobs = g.run_plan(1_700_000_000.0 + r as f64 * 100.0, 1 + r % 3);
        let mut bodies = Vec::new();
        // Completed first, then the stale in_progress and queued: nothing may resurrect.
        for action in ["completed", "in_progress", "queued"] {
            for j in &jobs {
                bodies.push(("workflow_job", g.job_payload(j, action, true)));
            }
        }
        bodies.push(("workflow_run", g.run_payload(&jobs, "completed", true)));
        for (event, body) in bodies {
            n += 1;
            assert_eq!(s.send(event, &format!("g-{n}"), body).await.unwrap(), 202);
        }
    }
    app.drained().await;
    let t = &g.truth;
    for (c, want) in &t.jobs_by_conclusion {
        assert_eq!(
            app.sum("devmetrics_workflow_jobs_total", &[("conclusion", c)]),
            *want as f64
        );
    }
    let (jobs, secs) = app.hist("devmetrics_workflow_job_duration_seconds", &[]);
    assert_eq!(jobs, t.jobs_by_conclusion.values().sum::<u64>());
    assert!((secs - t.job_seconds).abs() < 1e-6);
    let (_, q) = app.hist("devmetrics_workflow_job_queue_duration_seconds", &[]);
    assert!((q - t.queue_seconds).abs() < 1e-6);
    let (runs, rs) = app.hist("devmetrics_workflow_run_duration_seconds", &[]);
    assert_eq!(runs, t.runs_by_conclusion.values().sum::<u64>());
    assert!((rs - t.run_seconds).abs() < 1e-6);
    assert_eq!(app.sum("devmetrics_workflow_jobs_queued", &[]), 0.0);
    assert_eq!(app.sum("devmetrics_workflow_jobs_in_progress", &[]), 0.0);
    app.stop().await;
}

/// How Redis fails in the middle of a flood.
#[derive(Clone, Copy, PartialEq)]
enum RedisFault {
    /// Every connection reset and new ones refused, then healed.
    Partition,
    /// 150 ms added to every chunk both ways.
    SlowLink,
}

/// With the store in Redis, a partition from Redis in the middle of a flood: deliveries are
/// still accepted (they wait in the local queue), `/metrics` keeps serving the last values
/// with `devmetrics_store_up 0`, `/readyz` says why, and once Redis is back every job counts
/// exactly once.
#[tokio::test]
async fn a_redis_partition_mid_flood_loses_and_duplicates_nothing() {
    flood_through(RedisFault::Partition).await;
}

/// A slow link to Redis in the middle of a flood: applies take longer, nothing is lost or
/// counted twice.
#[tokio::test]
async fn a_slow_redis_link_mid_flood_loses_and_duplicates_nothing() {
    flood_through(RedisFault::SlowLink).await;
}

async fn flood_through(fault: RedisFault) {
    use crate::support::{REDIS_ADDR, service};
    if !service("Redis", REDIS_ADDR) {
        return;
    }
    let proxy = devmetrics::sim::chaos::Proxy::start(REDIS_ADDR.parse().unwrap())
        .await
        .unwrap();
    let prefix_dir = tempfile::tempdir().unwrap();
    let url = format!("redis://{}/0", proxy.addr);
    let prefix = crate::support::prefix_for(prefix_dir.path());
    let app = App::start(&[
        ("DEVMETRICS_STORAGE__BACKEND", "redis"),
        ("DEVMETRICS_STORAGE__REDIS__URL", &url),
        ("DEVMETRICS_STORAGE__REDIS__KEY_PREFIX", &prefix),
        ("DEVMETRICS_QUEUE__INITIAL_BACKOFF", "100ms"),
        ("DEVMETRICS_QUEUE__MAX_BACKOFF", "500ms"),
    ])
    .await;
    let base = app.url.replace("/webhooks/github", "");
    let s = Sender::new(app.url.clone(), SECRET);
    let mut g = Generator::new(31);
    let mut n = 0;
    let mut flood = async |g: &mut Generator, runs: usize| {
        for r in 0..runs {
            let jobs = g.run_plan(1_700_000_000.0 + r as f64 * 100.0, 2);
            for j in &jobs {
                for action in ["queued", "in_progress", "completed"] {
                    n += 1;
                    let body = g.job_payload(j, action, true);
                    let d = format!("p-{n}");
                    assert_eq!(s.send("workflow_job", &d, body.clone()).await.unwrap(), 202);
                    // GitHub's duplicate of some deliveries, under a new id.
                    if n % 5 == 0 {
                        assert_eq!(
                            s.send("workflow_job", &format!("{d}-again"), body)
                                .await
                                .unwrap(),
                            202
                        );
                    }
                }
            }
        }
    };
    flood(&mut g, 5).await;
    if fault == RedisFault::SlowLink {
        // Connections opened from now on are slow; the open one is reset to pick it up.
        proxy.delay(Duration::from_millis(150));
        proxy.cut();
        proxy.heal();
        flood(&mut g, 5).await;
        // Drained over the slow link, every apply a slow round trip.
        let slow = std::time::Instant::now();
        app.drained().await;
        assert!(
            slow.elapsed() >= Duration::from_millis(300),
            "{:?}",
            slow.elapsed()
        );
        proxy.delay(Duration::ZERO);
        proxy.cut();
        proxy.heal();
    } else {
        proxy.cut();
        flood(&mut g, 5).await;
    }
    if fault == RedisFault::Partition {
        // While Redis is unreachable: still serving, saying why.
        let mut saw_down = false;
        for _ in 0..100 {
            let m = app.page("/metrics").await;
            if m.contains("devmetrics_store_up 0") {
                saw_down = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(saw_down, "devmetrics_store_up never went to 0");
        let ready = client().get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let why = ready.text().await.unwrap();
        assert!(why.contains("degraded"), "{why}");
        proxy.heal();
    }
    flood(&mut g, 5).await;
    app.drained().await;
    // A write whose reply a cut connection lost is retried as a duplicate and reaches this
    // replica's mirror through the refresher, which runs every REFRESH.
    tokio::time::sleep(devmetrics::store::redis::REFRESH * 3).await;
    let t = &g.truth;
    for (c, want) in &t.jobs_by_conclusion {
        assert_eq!(
            app.sum("devmetrics_workflow_jobs_total", &[("conclusion", c)]),
            *want as f64,
            "{c}"
        );
    }
    let (jobs, secs) = app.hist("devmetrics_workflow_job_duration_seconds", &[]);
    assert_eq!(jobs, t.jobs_by_conclusion.values().sum::<u64>());
    assert!((secs - t.job_seconds).abs() < 1e-6);
    assert_eq!(app.sum("devmetrics_workflow_jobs_queued", &[]), 0.0);
    assert_eq!(app.sum("devmetrics_workflow_jobs_in_progress", &[]), 0.0);
    app.stop().await;
}

/// Three replicas sharing the Redis store and the RabbitMQ queue take a flood spread over all
/// of them. RabbitMQ goes away (every connection reset, new ones refused) and comes back, then
/// Redis does: every delivery that got its 202 is counted exactly once on every replica.
#[tokio::test]
async fn a_flood_over_three_replicas_survives_rabbitmq_then_redis_going_away() {
    flood_over_three_replicas(SharedQueue::RabbitMq).await;
}

/// The same with the queue on Redis streams: Redis, holding store and queue, goes away
/// mid-flood; deliveries wait in each replica's spool, and count exactly once afterwards.
#[tokio::test]
async fn a_flood_over_three_replicas_on_redis_streams_survives_redis_going_away() {
    flood_over_three_replicas(SharedQueue::RedisStreams).await;
}

#[derive(Clone, Copy, PartialEq)]
enum SharedQueue {
    RabbitMq,
    RedisStreams,
}

async fn flood_over_three_replicas(queue: SharedQueue) {
    use crate::support::{RABBITMQ_ADDR, REDIS_ADDR, service};
    use devmetrics::sim::chaos::Proxy;
    if !service("Redis", REDIS_ADDR)
        || (queue == SharedQueue::RabbitMq && !service("RabbitMQ", RABBITMQ_ADDR))
    {
        return;
    }
    let redis = Proxy::start(REDIS_ADDR.parse().unwrap()).await.unwrap();
    let rabbit = Proxy::start(RABBITMQ_ADDR.parse().unwrap()).await.unwrap();
    let prefix_dir = tempfile::tempdir().unwrap();
    let prefix = crate::support::prefix_for(prefix_dir.path());
    let redis_url = format!("redis://{}/0", redis.addr);
    let amqp_url = format!("amqp://guest:guest@{}/%2f", rabbit.addr);
    let mut apps = Vec::new();
    for i in 0..3 {
        let id = format!("r{i}");
        let mut env = vec![
            ("DEVMETRICS_STORAGE__BACKEND", "redis"),
            ("DEVMETRICS_STORAGE__REDIS__URL", redis_url.as_str()),
            ("DEVMETRICS_STORAGE__REDIS__KEY_PREFIX", prefix.as_str()),
            ("DEVMETRICS_QUEUE__INITIAL_BACKOFF", "100ms"),
            ("DEVMETRICS_QUEUE__MAX_BACKOFF", "500ms"),
            ("DEVMETRICS_HA__REPLICA_ID", id.as_str()),
        ];
        match queue {
            SharedQueue::RabbitMq => env.extend([
                ("DEVMETRICS_QUEUE__BACKEND", "rabbitmq"),
                ("DEVMETRICS_QUEUE__RABBITMQ__URL", amqp_url.as_str()),
                ("DEVMETRICS_QUEUE__RABBITMQ__PREFIX", prefix.as_str()),
                ("DEVMETRICS_QUEUE__RABBITMQ__TEST_QUEUE_EXPIRY", "5m"),
            ]),
            SharedQueue::RedisStreams => env.push(("DEVMETRICS_QUEUE__BACKEND", "redis")),
        }
        apps.push(App::start(&env).await);
    }
    let senders: Vec<Sender> = apps
        .iter()
        .map(|a| Sender::new(a.url.clone(), SECRET))
        .collect();
    let mut g = Generator::new(37);
    let mut n = 0usize;
    let mut flood = async |g: &mut Generator, runs: usize, round: usize| {
        for r in 0..runs {
            let jobs = g.run_plan(1_700_000_000.0 + (round * 100 + r) as f64 * 100.0, 2);
            for j in &jobs {
                for action in ["queued", "in_progress", "completed"] {
                    n += 1;
                    let body = g.job_payload(j, action, true);
                    let d = format!("f-{n}");
                    // Round robin over the replicas; GitHub's redelivery of some goes to
                    // another replica, under the same id.
                    let s = &senders[n % 3];
                    assert_eq!(s.send("workflow_job", &d, body.clone()).await.unwrap(), 202);
                    if n.is_multiple_of(4) {
                        // Refused as a duplicate (200), or accepted again (202) where the
                        // keys cannot be checked; counted once either way.
                        let again = &senders[(n + 1) % 3];
                        let code = again.send("workflow_job", &d, body).await.unwrap();
                        assert!(code == 200 || code == 202, "{code}");
                    }
                }
            }
        }
    };
    flood(&mut g, 3, 0).await;
    if queue == SharedQueue::RabbitMq {
        rabbit.cut();
        flood(&mut g, 3, 1).await;
        rabbit.heal();
        flood(&mut g, 3, 2).await;
    }
    redis.cut();
    flood(&mut g, 3, 3).await;
    redis.heal();
    flood(&mut g, 3, 4).await;

    let t = &g.truth;
    let want: u64 = t.jobs_by_conclusion.values().sum();
    let counted = |a: &App| {
        t.jobs_by_conclusion.iter().all(|(c, w)| {
            a.sum("devmetrics_workflow_jobs_total", &[("conclusion", c)]) == *w as f64
        }) && a.hist("devmetrics_workflow_job_duration_seconds", &[]).0 == want
            && a.sum("devmetrics_workflow_jobs_queued", &[]) == 0.0
            && a.sum("devmetrics_workflow_jobs_in_progress", &[]) == 0.0
    };
    for _ in 0..600 {
        if apps.iter().all(counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settled, and stays so: nothing arrives twice later.
    tokio::time::sleep(devmetrics::store::redis::REFRESH * 3).await;
    for a in &apps {
        for (c, w) in &t.jobs_by_conclusion {
            assert_eq!(
                a.sum("devmetrics_workflow_jobs_total", &[("conclusion", c)]),
                *w as f64,
                "{c}"
            );
        }
        let (jobs, secs) = a.hist("devmetrics_workflow_job_duration_seconds", &[]);
        assert_eq!(jobs, want);
        assert!((secs - t.job_seconds).abs() < 1e-6);
        assert_eq!(a.sum("devmetrics_workflow_jobs_queued", &[]), 0.0);
        assert_eq!(a.sum("devmetrics_workflow_jobs_in_progress", &[]), 0.0);
    }
    for a in apps {
        a.stop().await;
    }
}

/// On the embedded database a workflow delivery is handled in the commit that accepts it:
/// counted by the time its 202 arrives and never queued. A payload the processor cannot read
/// is queued as before and dead-lettered by the consumer; with `consumers: 0` deliveries
/// wait in the queue, as that setting asks.
#[tokio::test]
async fn the_embedded_database_handles_a_delivery_in_the_commit_that_accepts_it() {
    async fn post(app: &App, id: &str, body: &[u8]) -> u16 {
        client()
            .post(&app.url)
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", id)
            .header("x-hub-signature-256", signature(SECRET, body))
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
    let mut g = Generator::new(77);
    let body = job_body(&mut g);
    let app = App::start(&[]).await;
    assert_eq!(post(&app, "h-1", &body).await, 202);
    // Read at once, no waiting for a consumer.
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 1.0);
    let s = app.stats().await;
    assert_eq!(
        (s.published, s.acked, s.handled_at_publish, s.depth),
        (1, 1, 1, 0)
    );
    assert_eq!(post(&app, "h-1", &body).await, 200, "a redelivery");
    let unreadable = br#"{"action": "completed", "workflow_job": "not an object"}"#;
    assert_eq!(post(&app, "h-2", unreadable).await, 202);
    for _ in 0..500 {
        if app.stats().await.dead_lettered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = app.stats().await;
    assert_eq!(
        (s.published, s.handled_at_publish, s.dead_lettered, s.depth),
        (2, 1, 1, 0)
    );
    let page = app.page("/metrics").await;
    assert!(
        page.contains("devmetrics_queue_handled_at_publish_total{topic=\"webhooks/github\"} 1"),
        "{}",
        page.lines()
            .filter(|l| l.contains("devmetrics_queue_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    app.stop().await;

    let app = App::start(&[("DEVMETRICS_WEBHOOKS__GITHUB__CONSUMERS", "0")]).await;
    assert_eq!(post(&app, "q-1", &body).await, 202);
    let s = app.stats().await;
    assert_eq!((s.published, s.handled_at_publish, s.depth), (1, 0, 1));
    assert_eq!(app.sum("devmetrics_workflow_jobs_total", &[]), 0.0);
    app.stop().await;
}
