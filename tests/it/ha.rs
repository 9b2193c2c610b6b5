//! Replicas sharing one Redis: one truth, whichever replica writes, and the same output from
//! every replica once the refresher has run.

use std::sync::Arc;
use std::time::Duration;

use devmetrics::config::{RedisConfig, Secret};
use devmetrics::metrics::{self, Labels, Op, Sample, Update};
use devmetrics::store::redis::{REFRESH, RedisStore};
use devmetrics::store::{Lease, Store};

use crate::support::{REDIS_ADDR, prefix_for, service};

async fn replicas(n: usize) -> Option<(tempfile::TempDir, Vec<Arc<RedisStore>>)> {
    if !service("Redis", REDIS_ADDR) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedisConfig {
        url: Secret::new(format!("redis://{REDIS_ADDR}/0")),
        key_prefix: prefix_for(dir.path()),
    };
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(RedisStore::open(&cfg).await.unwrap());
    }
    Some((dir, v))
}

fn render(store: &RedisStore) -> String {
    let mut out = Vec::new();
    devmetrics::exposition::render(
        &store.snapshot().scopes,
        devmetrics::exposition::Format::Text,
        &mut out,
    )
    .unwrap();
    String::from_utf8(out).unwrap()
}

async fn converged(stores: &[Arc<RedisStore>]) -> String {
    for _ in 0..50 {
        let outs: Vec<String> = stores.iter().map(|s| render(s)).collect();
        if outs.iter().all(|o| *o == outs[0]) {
            return outs[0].clone();
        }
        tokio::time::sleep(REFRESH / 2).await;
    }
    panic!("replicas did not converge within 25 refreshes");
}

fn inc(route: &str) -> Update {
    Update {
        family: metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL,
        labels: Labels::new(metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL, &[route, "200"]).unwrap(),
        op: Op::Inc(1.0),
    }
}

#[tokio::test]
async fn replicas_apply_each_key_once_and_converge() {
    let Some((_dir, stores)) = replicas(3).await else {
        return;
    };
    // Every replica applies the same 200 keys at once: each counts once in all.
    let mut tasks = Vec::new();
    for s in &stores {
        for k in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.apply_once(&format!("k{k}"), "events", vec![inc("/x")])
                    .await
                    .unwrap()
            }));
        }
    }
    let mut applied = 0;
    for t in tasks {
        if t.await.unwrap() == devmetrics::store::Applied::Applied {
            applied += 1;
        }
    }
    assert_eq!(applied, 200);
    let out = converged(&stores).await;
    assert!(
        out.contains("devmetrics_http_requests_total{route=\"/x\",code=\"200\"} 200"),
        "{out}"
    );

    // A replace on one replica shows on the others; a newer version wins wherever written.
    let fid = metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL;
    let sample = |v: f64| {
        vec![Sample::number(
            fid,
            Labels::new(fid, &["/poll", "200"]).unwrap(),
            v,
        )]
    };
    stores[0]
        .replace_scope_if_newer("github/o/r", 10, sample(1.0))
        .await
        .unwrap();
    stores[1]
        .replace_scope_if_newer("github/o/r", 5, sample(2.0))
        .await
        .unwrap();
    stores[2]
        .replace_scope_if_newer("github/o/r", 20, sample(3.0))
        .await
        .unwrap();
    let out = converged(&stores).await;
    assert!(
        out.contains("devmetrics_http_requests_total{route=\"/poll\",code=\"200\"} 3"),
        "{out}"
    );

    // A drop on one replica disappears everywhere.
    stores[1]
        .drop_scopes(vec!["github/o/r".into()])
        .await
        .unwrap();
    let out = converged(&stores).await;
    assert!(!out.contains("/poll"), "{out}");
}

#[tokio::test]
async fn the_lease_is_held_by_one_replica_at_a_time_with_growing_fences() {
    let Some((_dir, stores)) = replicas(2).await else {
        return;
    };
    let ttl = Duration::from_millis(300);
    let a = stores[0].acquire("leader", "a", ttl).await.unwrap().unwrap();
    assert!(stores[1].acquire("leader", "b", ttl).await.unwrap().is_none());
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let b = stores[1].acquire("leader", "b", ttl).await.unwrap().unwrap();
    assert!(b.fence > a.fence);
    assert!(
        stores[0]
            .renew("leader", "a", a.fence, ttl)
            .await
            .unwrap()
            .is_none(),
        "a lapsed grant cannot be renewed"
    );
    let (holder, g) = stores[0].holder("leader").await.unwrap().unwrap();
    assert_eq!((holder.as_str(), g.fence), ("b", b.fence));
}
