//! The contract every [`Store`] and [`Lease`] backend passes, written against the traits
//! alone. A backend's tests call [`run`] with a fresh, empty backend; the SQLite backend runs
//! it in its unit tests and every backend in the integration tests.

use std::sync::Arc;
use std::time::Duration;

use super::{Applied, Batch, Lease, Retention, SharedStore, Store, Written};
use crate::metrics::{self, Labels, Op, Sample, Update, Value};

/// Runs every check of the store and lease contracts.
pub async fn run(store: SharedStore, lease: Arc<dyn Lease>) {
    replace_is_atomic_and_drops_absent_series(&*store).await;
    conditional_replace_keeps_the_newest_version(&*store).await;
    apply_once_counts_each_key_once_under_concurrency(store.clone()).await;
    apply_each_once_applies_each_key_at_most_once(&*store).await;
    wrong_operations_are_refused(&*store).await;
    kv_round_trips_deletes_and_expires(&*store).await;
    kv_scans_by_prefix(&*store).await;
    gc_forgets_keys_past_retention(&*store).await;
    gauge_members_leave_exactly_what_they_entered(&*store).await;
    gauge_members_expire(&*store).await;
    drop_scopes_removes_series(&*store).await;
    lease_is_exclusive_renewable_and_fenced(&*lease).await;
    fenced_writes_need_the_live_grant(&*store, &*lease).await;
}

fn route(route: &str) -> Labels {
    Labels::new(metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL, &[route, "200"]).expect("two labels")
}

fn sample(r: &str, v: f64) -> Sample {
    Sample::number(metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL, route(r), v)
}

fn inc(r: &str) -> Update {
    Update {
        family: metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL,
        labels: route(r),
        op: Op::Inc(1.0),
    }
}

fn batch(key: &str, scope: &str, updates: Vec<Update>) -> Batch {
    Batch {
        key: key.to_string(),
        scope: scope.to_string(),
        updates,
    }
}

fn retention(keys: u64, members: u64) -> Retention {
    Retention {
        keys: Duration::from_secs(keys),
        members: Duration::from_secs(members),
    }
}

fn gauge(labels: &[&str], op: Op) -> Update {
    Update {
        family: metrics::DEVMETRICS_WORKFLOW_JOBS_QUEUED,
        labels: Labels::new(metrics::DEVMETRICS_WORKFLOW_JOBS_QUEUED, labels).expect("two labels"),
        op,
    }
}

fn gauge_value(store: &dyn Store, scope: &str, labels: &[&str]) -> Option<f64> {
    store
        .snapshot()
        .get(
            scope,
            metrics::DEVMETRICS_WORKFLOW_JOBS_QUEUED,
            &Labels::new(metrics::DEVMETRICS_WORKFLOW_JOBS_QUEUED, labels).expect("two labels"),
        )
        .and_then(Value::as_f64)
}

fn number(store: &dyn Store, scope: &str, r: &str) -> Option<f64> {
    store
        .snapshot()
        .get(scope, metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL, &route(r))
        .and_then(Value::as_f64)
}

pub async fn replace_is_atomic_and_drops_absent_series(store: &dyn Store) {
    let scope = "contract/replace";
    store
        .replace_scope(scope, vec![sample("/a", 1.0), sample("/b", 2.0)])
        .await
        .expect("replace");
    store
        .replace_scope(scope, vec![sample("/b", 3.0)])
        .await
        .expect("replace");
    assert_eq!(number(store, scope, "/a"), None, "absent series disappear");
    assert_eq!(number(store, scope, "/b"), Some(3.0));
    assert!(store.scope_updated_at(scope).is_some());
    // An empty result is a result: the scope stays, empty.
    store
        .replace_scope(scope, Vec::new())
        .await
        .expect("replace");
    let snap = store.snapshot();
    assert_eq!(snap.scope(scope).map(|s| s.series_count()), Some(0));
}

pub async fn conditional_replace_keeps_the_newest_version(store: &dyn Store) {
    let scope = "contract/versioned";
    let w = |v: i64, x: f64| store.replace_scope_if_newer(scope, v, vec![sample("/v", x)]);
    assert_eq!(w(100, 1.0).await.expect("write"), Written::Written);
    assert_eq!(w(100, 2.0).await.expect("write"), Written::Superseded);
    assert_eq!(w(50, 3.0).await.expect("write"), Written::Superseded);
    assert_eq!(number(store, scope, "/v"), Some(1.0));
    assert_eq!(store.snapshot().scope(scope).map(|s| s.version), Some(100));
    assert_eq!(w(200, 4.0).await.expect("write"), Written::Written);
    assert_eq!(number(store, scope, "/v"), Some(4.0));
    // An unconditional replace keeps the version, so an older window still loses after it.
    store
        .replace_scope(scope, vec![sample("/v", 5.0)])
        .await
        .expect("replace");
    assert_eq!(store.snapshot().scope(scope).map(|s| s.version), Some(200));
    assert_eq!(w(150, 6.0).await.expect("write"), Written::Superseded);
    assert_eq!(number(store, scope, "/v"), Some(5.0));
}

pub async fn apply_once_counts_each_key_once_under_concurrency(store: SharedStore) {
    let scope = "contract/events";
    let hist = metrics::DEVMETRICS_HTTP_REQUEST_DURATION_SECONDS;
    let hl = Labels::new(hist, &["/x"]).expect("one label");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (store, hl) = (store.clone(), hl.clone());
        tasks.push(tokio::spawn(async move {
            // Every key is sent twice; only one application may count.
            let key = format!("contract-k{}", i % 100);
            let updates = vec![
                inc("/x"),
                Update {
                    family: hist,
                    labels: hl,
                    op: Op::Observe(0.2),
                },
            ];
            store.apply_once(&key, scope, updates).await.expect("apply")
        }));
    }
    let mut applied = 0;
    for t in tasks {
        if t.await.expect("task") == Applied::Applied {
            applied += 1;
        }
    }
    assert_eq!(applied, 100);
    assert_eq!(number(&*store, scope, "/x"), Some(100.0));
    let snap = store.snapshot();
    let Some(Value::Histogram(h)) = snap.get(scope, hist, &hl) else {
        panic!("the histogram exists")
    };
    assert_eq!(h.count(), 100);
    assert!((h.sum - 20.0).abs() < 1e-9);
}

pub async fn apply_each_once_applies_each_key_at_most_once(store: &dyn Store) {
    let scope = "contract/batches";
    let got = store
        .apply_each_once(vec![
            batch("contract-b1", scope, vec![inc("/a")]),
            batch("contract-b1", scope, vec![inc("/a")]),
            batch("contract-b2", scope, vec![inc("/a")]),
        ])
        .await
        .expect("apply");
    assert_eq!(
        got,
        [Applied::Applied, Applied::Duplicate, Applied::Applied]
    );
    let again = store
        .apply_each_once(vec![
            batch("contract-b2", scope, vec![inc("/a")]),
            batch("contract-b3", scope, vec![inc("/a")]),
            batch("contract-b4", "contract/batches-other", vec![inc("/a")]),
        ])
        .await
        .expect("apply");
    assert_eq!(
        again,
        [Applied::Duplicate, Applied::Applied, Applied::Applied]
    );
    assert_eq!(number(store, scope, "/a"), Some(3.0));
    assert_eq!(
        number(store, "contract/batches-other", "/a"),
        Some(1.0),
        "each batch goes to its own scope"
    );
}

pub async fn wrong_operations_are_refused(store: &dyn Store) {
    let err = store
        .apply_once(
            "contract-wrong",
            "contract/wrong",
            vec![Update {
                family: metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL,
                labels: route("/"),
                op: Op::Observe(1.0),
            }],
        )
        .await
        .expect_err("a counter takes no observation");
    assert_eq!(err.kind(), "wrong_kind");
    assert!(!err.is_transient());
}

pub async fn kv_scans_by_prefix(store: &dyn Store) {
    for (k, v) in [
        ("log:b", "2"),
        ("log:a", "1"),
        ("log:c%_", "3"),
        ("other", "x"),
    ] {
        store
            .kv_put("contract.scan", k, v.as_bytes().to_vec(), None)
            .await
            .expect("put");
    }
    store
        .kv_put("contract.scan2", "log:z", b"elsewhere".to_vec(), None)
        .await
        .expect("put");
    store
        .kv_put(
            "contract.scan",
            "log:gone",
            b"short".to_vec(),
            Some(Duration::from_millis(50)),
        )
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let all = store
        .kv_scan("contract.scan", "log:", 100)
        .await
        .expect("scan");
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["log:a", "log:b", "log:c%_"],
        "in key order, expired and other namespaces left out"
    );
    assert_eq!(all[0].1, b"1");
    let first = store
        .kv_scan("contract.scan", "log:", 2)
        .await
        .expect("scan");
    assert_eq!(first.len(), 2, "the limit holds");
    assert!(
        store
            .kv_scan("contract.scan", "log:c%", 10)
            .await
            .expect("scan")
            .len()
            == 1,
        "a prefix holding LIKE's wildcards is literal"
    );
    store
        .kv_delete("contract.scan", "log:a")
        .await
        .expect("delete");
    assert_eq!(
        store
            .kv_scan("contract.scan", "", 100)
            .await
            .expect("scan")
            .len(),
        3,
        "a deleted key leaves the scan"
    );
}

pub async fn kv_round_trips_deletes_and_expires(store: &dyn Store) {
    store
        .kv_put("contract", "a", b"x".to_vec(), None)
        .await
        .expect("put");
    assert_eq!(
        store.kv_get("contract", "a").await.expect("get"),
        Some(b"x".to_vec())
    );
    assert_eq!(store.kv_get("contract", "b").await.expect("get"), None);
    assert_eq!(store.kv_get("other", "a").await.expect("get"), None);
    store
        .kv_put("contract", "a", b"y".to_vec(), None)
        .await
        .expect("overwrite");
    assert_eq!(
        store.kv_get("contract", "a").await.expect("get"),
        Some(b"y".to_vec())
    );
    store.kv_delete("contract", "a").await.expect("delete");
    assert_eq!(store.kv_get("contract", "a").await.expect("get"), None);
    store
        .kv_delete("contract", "never-there")
        .await
        .expect("deleting nothing is fine");
    store
        .kv_put(
            "contract",
            "short",
            b"z".to_vec(),
            Some(Duration::from_secs(1)),
        )
        .await
        .expect("put");
    store
        .kv_put(
            "contract",
            "long",
            b"z".to_vec(),
            Some(Duration::from_secs(3600)),
        )
        .await
        .expect("put");
    assert!(
        store
            .kv_get("contract", "short")
            .await
            .expect("get")
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(store.kv_get("contract", "short").await.expect("get"), None);
    assert!(
        store
            .kv_get("contract", "long")
            .await
            .expect("get")
            .is_some()
    );
}

pub async fn gc_forgets_keys_past_retention(store: &dyn Store) {
    let scope = "contract/gc";
    store
        .apply_once("contract-gc", scope, vec![inc("/g")])
        .await
        .expect("apply");
    store.gc(&retention(3600, 3600)).await.expect("gc");
    assert_eq!(
        store
            .apply_once("contract-gc", scope, vec![inc("/g")])
            .await
            .expect("apply"),
        Applied::Duplicate,
        "a key within retention is kept"
    );
    // Keys are kept to whole seconds; a zero retention forgets everything older than now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store.gc(&retention(0, 3600)).await.expect("gc");
    assert_eq!(
        store
            .apply_once("contract-gc", scope, vec![inc("/g")])
            .await
            .expect("apply"),
        Applied::Applied,
        "a key past retention is forgotten"
    );
}

pub async fn drop_scopes_removes_series(store: &dyn Store) {
    store
        .replace_scope("contract/drop", vec![sample("/d", 1.0)])
        .await
        .expect("replace");
    store
        .drop_scopes(vec!["contract/drop".into()])
        .await
        .expect("drop");
    assert!(store.snapshot().scope("contract/drop").is_none());
    assert_eq!(store.scope_updated_at("contract/drop"), None);
}

pub async fn lease_is_exclusive_renewable_and_fenced(lease: &dyn Lease) {
    let ttl = Duration::from_millis(400);
    let name = "contract-leader";
    let a = lease
        .acquire(name, "a", ttl)
        .await
        .expect("acquire")
        .expect("a free lease is granted");
    assert!(
        lease
            .acquire(name, "b", ttl)
            .await
            .expect("acquire")
            .is_none(),
        "a live grant excludes others"
    );
    let again = lease
        .acquire(name, "a", ttl)
        .await
        .expect("acquire")
        .expect("the holder may ask again");
    assert_eq!(again.fence, a.fence, "asking again keeps the fence");
    let (holder, g) = lease.holder(name).await.expect("holder").expect("held");
    assert_eq!((holder.as_str(), g.fence), ("a", a.fence));
    assert!(
        lease
            .renew(name, "a", a.fence, ttl)
            .await
            .expect("renew")
            .is_some()
    );
    assert!(
        lease
            .renew(name, "b", a.fence, ttl)
            .await
            .expect("renew")
            .is_none(),
        "only the holder renews"
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(
        lease.holder(name).await.expect("holder").is_none(),
        "expired"
    );
    assert!(
        lease
            .renew(name, "a", a.fence, ttl)
            .await
            .expect("renew")
            .is_none(),
        "an expired grant cannot be renewed"
    );
    // Long enough that a loaded machine cannot let it lapse before its release below.
    let b = lease
        .acquire(name, "b", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("an expired lease is free");
    assert!(b.fence > a.fence, "a new holder gets a greater fence");
    assert!(
        !lease.release(name, "a", a.fence).await.expect("release"),
        "a stale holder releases nothing"
    );
    assert!(lease.release(name, "b", b.fence).await.expect("release"));
    let c = lease
        .acquire(name, "c", ttl)
        .await
        .expect("acquire")
        .expect("a released lease is free at once");
    assert!(c.fence > b.fence);
}

pub async fn gauge_members_leave_exactly_what_they_entered(store: &dyn Store) {
    let (a, b) = ("contract/members-a", "contract/members-b");
    store
        .apply_each_once(vec![
            batch(
                "m-enter-1",
                a,
                vec![gauge(&["o/old", "x"], Op::Enter("m1".into()))],
            ),
            batch(
                "m-enter-2",
                a,
                vec![gauge(&["o/old", "x"], Op::Enter("m2".into()))],
            ),
        ])
        .await
        .expect("enter");
    assert_eq!(gauge_value(store, a, &["o/old", "x"]), Some(2.0));
    // The leave names another scope and labels (a renamed repository): it still takes 1 off
    // exactly what m1 entered, and creates nothing where it points.
    store
        .apply_each_once(vec![batch(
            "m-leave-1",
            b,
            vec![gauge(&["o/new", "y"], Op::Leave("m1".into()))],
        )])
        .await
        .expect("leave");
    assert_eq!(gauge_value(store, a, &["o/old", "x"]), Some(1.0));
    assert_eq!(gauge_value(store, b, &["o/new", "y"]), None);
    // Leaving twice (under another key), or leaving what never entered, takes nothing off.
    store
        .apply_each_once(vec![
            batch(
                "m-leave-1b",
                a,
                vec![gauge(&["o/old", "x"], Op::Leave("m1".into()))],
            ),
            batch(
                "m-leave-9",
                a,
                vec![gauge(&["o/old", "x"], Op::Leave("m9".into()))],
            ),
        ])
        .await
        .expect("leave");
    assert_eq!(gauge_value(store, a, &["o/old", "x"]), Some(1.0));
    // Entering and leaving in one step nets zero; entering an existing member adds nothing.
    store
        .apply_each_once(vec![
            batch(
                "m-enter-3",
                a,
                vec![gauge(&["o/old", "x"], Op::Enter("m3".into()))],
            ),
            batch(
                "m-leave-3",
                a,
                vec![gauge(&["o/old", "x"], Op::Leave("m3".into()))],
            ),
            batch(
                "m-enter-2b",
                a,
                vec![gauge(&["o/old", "x"], Op::Enter("m2".into()))],
            ),
        ])
        .await
        .expect("enter and leave");
    assert_eq!(gauge_value(store, a, &["o/old", "x"]), Some(1.0));
    store
        .apply_once(
            "m-leave-2",
            a,
            vec![gauge(&["o/old", "x"], Op::Leave("m2".into()))],
        )
        .await
        .expect("leave");
    assert_eq!(gauge_value(store, a, &["o/old", "x"]), Some(0.0));
}

pub async fn gauge_members_expire(store: &dyn Store) {
    let scope = "contract/members-expire";
    store
        .apply_once(
            "m-exp-enter",
            scope,
            vec![gauge(&["o/r", "x"], Op::Enter("mx".into()))],
        )
        .await
        .expect("enter");
    store.gc(&retention(3600, 3600)).await.expect("gc");
    assert_eq!(
        gauge_value(store, scope, &["o/r", "x"]),
        Some(1.0),
        "a fresh member stays"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.gc(&retention(3600, 0)).await.expect("gc");
    assert_eq!(
        gauge_value(store, scope, &["o/r", "x"]),
        Some(0.0),
        "an expired member is taken off its gauge"
    );
    // Its late leave finds nothing: the gauge never goes below zero.
    store
        .apply_once(
            "m-exp-leave",
            scope,
            vec![gauge(&["o/r", "x"], Op::Leave("mx".into()))],
        )
        .await
        .expect("leave");
    assert_eq!(gauge_value(store, scope, &["o/r", "x"]), Some(0.0));
}

pub async fn fenced_writes_need_the_live_grant(store: &dyn Store, lease: &dyn Lease) {
    let ttl = Duration::from_millis(300);
    let name = "contract-fenced";
    let put = |holder: &'static str, fence: u64, v: &'static [u8]| {
        lease.kv_put_fenced(
            name,
            holder,
            fence,
            "contract.fenced",
            "k",
            v.to_vec(),
            None,
        )
    };
    assert!(
        !put("a", 1, b"none").await.expect("put"),
        "no grant, no write"
    );
    let a = lease
        .acquire(name, "a", ttl)
        .await
        .expect("acquire")
        .expect("granted");
    assert!(put("a", a.fence, b"a").await.expect("put"));
    assert!(
        !put("b", a.fence, b"b").await.expect("put"),
        "another holder's fence is refused"
    );
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(
        !put("a", a.fence, b"late").await.expect("put"),
        "a lapsed grant writes nothing"
    );
    // The new holder's grant is long, so a loaded machine cannot let it lapse mid-test.
    let b = lease
        .acquire(name, "b", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("granted");
    assert!(
        !put("a", a.fence, b"stale").await.expect("put"),
        "the deposed holder is fenced off"
    );
    assert!(put("b", b.fence, b"b").await.expect("put"));
    assert_eq!(
        store.kv_get("contract.fenced", "k").await.expect("get"),
        Some(b"b".to_vec())
    );
    assert!(
        lease
            .kv_put_fenced(
                name,
                "b",
                b.fence,
                "contract.fenced",
                "t",
                b"x".to_vec(),
                Some(Duration::from_secs(3600))
            )
            .await
            .expect("put")
    );
    assert_eq!(
        store.kv_get("contract.fenced", "t").await.expect("get"),
        Some(b"x".to_vec())
    );
}
