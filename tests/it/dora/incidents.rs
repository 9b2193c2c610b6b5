use super::*;

const PAY: &str = "{project=\"PAY\",team=\"Payments\"}";
const OPS: &str = "{project=\"OPS\",team=\"Platform\"}";
const XYZ: &str = "{project=\"XYZ\",team=\"Unknown\"}";

/// Incidents created, resolved, reopened and resolved again, across the US DST change, with
/// duplicates and out-of-order deliveries; every count and sum worked out by hand.
#[tokio::test]
async fn incidents_count_once_and_restore_times_are_final_resolution_minus_creation() {
    let app = App::start().await;
    let s = app.sender();
    // PAY-1: created 2026-03-07 23:30 PST (07:30Z), resolved 2026-03-08 04:30 PDT (11:30Z),
    // after the clocks went forward: 4 h = 14400 s, not the 5 h the wall clock suggests.
    // The resolution arrives first.
    let pay1 = issue("PAY-1", "2026-03-07T23:30:00.000-0800");
    let pay1_done = resolved(pay1.clone(), "2026-03-08T04:30:00.000-0700");
    assert_eq!(
        s.send(
            "p1-r",
            body("jira:issue_updated", &pay1_done, 1_772_969_400_000)
        )
        .await
        .unwrap(),
        202
    );
    assert_eq!(
        s.send("p1-c", body("jira:issue_created", &pay1, 1_772_955_000_000))
            .await
            .unwrap(),
        202
    );
    // PAY-2: resolved after 1800.5 s, reopened, resolved again at 12:00:00.000Z: the final
    // restore time is 7199.75 s (milliseconds kept).
    let pay2 = issue("PAY-2", "2026-03-09T10:00:00.250+0000");
    let t = 1_773_050_400_000; // 2026-03-09T10:00:00Z
    assert_eq!(
        s.send("p2-c", body("jira:issue_created", &pay2, t + 250))
            .await
            .unwrap(),
        202
    );
    let first = body(
        "jira:issue_updated",
        &resolved(pay2.clone(), "2026-03-09T10:30:00.750+0000"),
        t + 1_800_750,
    );
    assert_eq!(s.send("p2-r1", first.clone()).await.unwrap(), 202);
    // Jira retrying the same delivery.
    assert_eq!(s.send("p2-r1", first).await.unwrap(), 200);
    let mut reopened = pay2.clone();
    reopened.category = "indeterminate".into();
    assert_eq!(
        s.send("p2-o", body("jira:issue_updated", &reopened, t + 3_600_000))
            .await
            .unwrap(),
        202
    );
    let again = resolved(pay2.clone(), "2026-03-09T12:00:00.000+0000");
    assert_eq!(
        s.send("p2-r2", body("jira:issue_updated", &again, t + 7_200_000))
            .await
            .unwrap(),
        202
    );
    // An old comment event about PAY-2 arriving late changes nothing.
    assert_eq!(
        s.send("p2-late", body("jira:issue_updated", &reopened, t + 60_000))
            .await
            .unwrap(),
        202
    );
    // OPS-1 stays open; OPS-3 is done without a resolution date: restored at the event,
    // 600 s after creation.
    assert_eq!(
        s.send(
            "o1",
            body(
                "jira:issue_created",
                &issue("OPS-1", "2026-03-10T00:00:00.000Z"),
                1_773_100_800_000
            )
        )
        .await
        .unwrap(),
        202
    );
    let mut ops3 = issue("OPS-3", "2026-03-10T00:00:00.000+0000");
    ops3.category = "done".into();
    assert_eq!(
        s.send("o3", body("jira:issue_updated", &ops3, 1_773_101_400_000))
            .await
            .unwrap(),
        202
    );
    // A Bug is not an incident; a project no team lists is Unknown's. Sent twice without an
    // identifier: the body is the key.
    let mut bug = issue("OPS-2", "2026-03-10T00:00:00.000Z");
    bug.issue_type = "Bug".into();
    assert_eq!(
        s.send("o2", body("jira:issue_created", &bug, 1_773_100_800_000))
            .await
            .unwrap(),
        202
    );
    let x = body(
        "jira:issue_created",
        &issue("XYZ-1", "2026-03-10T00:00:00.000Z"),
        1_773_100_800_000,
    );
    assert_eq!(s.send("", x.clone()).await.unwrap(), 202);
    assert_eq!(s.send("", x).await.unwrap(), 200);

    let want_count: BTreeMap<String, f64> = [
        (PAY.to_string(), 2.0),
        (OPS.to_string(), 2.0),
        (XYZ.to_string(), 1.0),
    ]
    .into();
    let want_sum: BTreeMap<String, f64> = [
        (PAY.to_string(), 14400.0 + 7199.75),
        (OPS.to_string(), 600.0),
        (XYZ.to_string(), 0.0),
    ]
    .into();
    let close = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
        a.len() == b.len()
            && a.iter()
                .all(|(k, v)| b.get(k).is_some_and(|w| (v - w).abs() < 1e-6))
    };
    let sums = app
        .series_when("jira_incidents_duration_sum", |s| close(s, &want_sum))
        .await;
    assert!(close(&sums, &want_sum), "{sums:?}");
    let text = app.metrics(None).await;
    assert!(
        close(&series(&text, "jira_incidents"), &want_count),
        "{text}"
    );
    assert!(text.contains("# TYPE jira_incidents counter"), "{text}");
    // OpenMetrics keeps the name; a counter without `_total` is typed unknown there.
    let om = app
        .metrics(Some("application/openmetrics-text; version=1.0.0"))
        .await;
    assert!(om.contains("# TYPE jira_incidents unknown"), "{om}");
    assert!(close(&series(&om, "jira_incidents"), &want_count), "{om}");
    assert!(
        close(&series(&om, "jira_incidents_duration_sum"), &want_sum),
        "{om}"
    );
    let events = series(&text, "devmetrics_dora_events_total");
    assert_eq!(events["{source=\"jira\",outcome=\"filtered\"}"], 1.0);
    assert_eq!(
        events["{source=\"jira\",outcome=\"stale\"}"], 2.0,
        "{events:?}"
    );
    let deliveries = series(&text, "devmetrics_webhook_deliveries_total");
    assert_eq!(deliveries["{source=\"jira\",outcome=\"duplicate\"}"], 2.0);

    // After a restart the state carries on: a redelivery of PAY-1's resolution changes nothing.
    let base = app.running.base.clone();
    let dir = app.dir;
    app.running.stop().await;
    let cfg = crate::support::Backend::from_env().config(dir.path(), &sections());
    let running = crate::support::start(cfg, "http").await;
    let again = App { running, dir };
    let s = again.sender();
    assert_eq!(
        s.send(
            "p1-r-again",
            body("jira:issue_updated", &pay1_done, 1_772_969_400_000)
        )
        .await
        .unwrap(),
        202
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = again.metrics(None).await;
    assert!(
        close(&series(&text, "jira_incidents"), &want_count),
        "{text}"
    );
    assert!(
        close(&series(&text, "jira_incidents_duration_sum"), &want_sum),
        "{text}"
    );
    let _ = base;
    again.running.stop().await;
}

/// A Jira Automation rule's URL token verifies too (on dora-exporter's `/api/jira`); a wrong
/// signature, a wrong token and a body that is not a JSON object are refused and counted.
#[tokio::test]
async fn jira_deliveries_are_verified() {
    let app = App::start().await;
    let b = body(
        "jira:issue_created",
        &issue("OPS-9", "2026-03-10T00:00:00.000Z"),
        1,
    );
    let c = reqwest::Client::new();
    let post = async |url: String, sig: Option<String>, body: Vec<u8>| {
        let mut r = c.post(url).header("content-type", "application/json");
        if let Some(s) = sig {
            r = r.header("x-hub-signature", s);
        }
        r.body(body).send().await.unwrap().status().as_u16()
    };
    let base = &app.running.base;
    assert_eq!(
        post(format!("{base}/api/jira?token={TOKEN}"), None, b.clone()).await,
        202
    );
    assert_eq!(
        post(format!("{base}/api/jira?token=wrong"), None, b.clone()).await,
        401
    );
    assert_eq!(
        post(format!("{base}/webhooks/jira"), None, b.clone()).await,
        401
    );
    let forged = devmetrics::sim::jira::signature("not-the-secret", &b);
    assert_eq!(
        post(format!("{base}/webhooks/jira"), Some(forged), b.clone()).await,
        401
    );
    let list = b"[1,2]".to_vec();
    let sig = devmetrics::sim::jira::signature(SECRET, &list);
    assert_eq!(
        post(format!("{base}/webhooks/jira"), Some(sig), list).await,
        400
    );
    let got = app.series_when("jira_incidents", |s| !s.is_empty()).await;
    assert_eq!(got.get(OPS), Some(&1.0), "{got:?}");
    let text = app.metrics(None).await;
    let d = series(&text, "devmetrics_webhook_deliveries_total");
    assert_eq!(d["{source=\"jira\",outcome=\"bad_signature\"}"], 3.0);
    assert_eq!(d["{source=\"jira\",outcome=\"malformed_json\"}"], 1.0);
    app.running.stop().await;
}

/// Every real Jira example parses as an incident observation or is rejected with a named
/// reason; none panics.
#[test]
fn every_jira_example_parses_or_is_rejected_with_a_reason() {
    use devmetrics::sources::dora::jira::{Rejected, observe};
    let Some(dir) = devmetrics::sim::research_dir("jira-webhooks") else {
        return;
    };
    let mut files = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 50, "{}", files.len());
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &files {
        let body = std::fs::read(f).unwrap();
        let got = observe(&body, 1.0, &Default::default());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let event = v["webhookEvent"].as_str().unwrap_or("");
        let created = v["issue"]["fields"]["created"].as_str();
        match &got {
            Ok(o) => {
                assert!(
                    event.starts_with("jira:issue") || event.starts_with("comment"),
                    "{f:?}"
                );
                assert!(o.created > 1.4e9 && o.created < 1.8e9, "{f:?}: {o:?}");
                if let Some(r) = o.resolved {
                    assert!(r >= o.created, "{f:?}: resolved before created");
                }
            }
            Err(Rejected::NoIssue) => assert!(v["issue"]["key"].is_null(), "{f:?}"),
            Err(Rejected::NoCreated) => assert!(created.is_none(), "{f:?}"),
            Err(r) => panic!("{f:?}: unexpected {r:?}"),
        }
        *outcomes
            .entry(got.as_ref().map_or_else(|r| r.as_str(), |_| "incident"))
            .or_default() += 1;
    }
    // The examples with a resolution: four resolved or closed issues.
    let resolved = files
        .iter()
        .filter(|f| {
            let b = std::fs::read(f).unwrap();
            observe(&b, 1.0, &Default::default()).is_ok_and(|o| o.resolved.is_some())
        })
        .count();
    assert!(resolved >= 4, "{resolved}");
    assert!(outcomes["incident"] > 40, "{outcomes:?}");
}
