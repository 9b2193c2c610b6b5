use super::*;

/// A CD tool outside GitHub reports deployments with its bearer token: each id counts once,
/// like a GitHub deployment status, and ships the pushed commits.
#[tokio::test]
async fn cd_tools_report_deployments_with_a_token_and_an_id() {
    let app = App::start().await;
    let url = format!("{}/api/deployments", app.running.base);
    let c = reqwest::Client::new();
    let post = async |token: Option<&str>, body: serde_json::Value| {
        let mut r = c.post(&url).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let sha = "c".repeat(40);
    // The change was pushed 30 minutes before the deployment finished.
    let push = devmetrics::sim::webhooks::push_payload(
        "acme/pay",
        &"0".repeat(40),
        &sha,
        &[(sha.clone(), 1_773_050_400.0)],
    );
    assert_eq!(
        app.github().send("push", "api-push", push).await.unwrap(),
        202
    );
    let good = serde_json::json!({
        "id": "argo-1", "repo": "acme/pay", "environment": "production",
        "sha": sha, "finished_at": "2026-03-09T10:30:00Z"
    });
    assert_eq!(post(None, good.clone()).await.0, 401);
    assert_eq!(post(Some("wrong"), good.clone()).await.0, 401);
    assert_eq!(post(Some(API_TOKEN), good.clone()).await.0, 202);
    assert_eq!(post(Some(API_TOKEN), good.clone()).await.0, 200);
    let mut changed = good.clone();
    changed["sha"] = serde_json::json!("d".repeat(40));
    assert_eq!(post(Some(API_TOKEN), changed).await.0, 409);
    let mut bad = good.clone();
    bad["finished_at"] = serde_json::json!("yesterday");
    let (code, body) = post(Some(API_TOKEN), bad).await;
    assert_eq!(code, 400);
    assert!(body.contains("finished_at"), "{body}");
    let (code, body) = post(
        Some(API_TOKEN),
        serde_json::json!({"id": "x", "repo": "acme/pay"}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("missing field"), "{body}");
    assert!(!body.contains(API_TOKEN));

    let row = "{repo=\"pay\",environment=\"production\",team=\"Payments\",status=\"success\",redeployment=\"false\"}";
    let got = app
        .series_when("github_deployments_total", |s| s.get(row) == Some(&1.0))
        .await;
    assert_eq!(got.get(row), Some(&1.0), "{got:?}");
    let text = app.metrics(None).await;
    assert_eq!(
        series(&text, "github_deployments_duration").get(row),
        Some(&1800.0)
    );
    let lead = series(&text, "dora_change_lead_time_seconds_sum");
    assert_eq!(lead.get("{team=\"Payments\"}"), Some(&1800.0), "{lead:?}");
    let d = series(&text, "devmetrics_webhook_deliveries_total");
    assert_eq!(d["{source=\"deployments_api\",outcome=\"bad_token\"}"], 2.0);
    assert_eq!(d["{source=\"deployments_api\",outcome=\"invalid\"}"], 2.0);
    assert_eq!(d["{source=\"deployments_api\",outcome=\"conflict\"}"], 1.0);
    app.running.stop().await;
}
