//! Application Insights: `WorkflowRun`, `WorkflowJob` and `WorkflowStep` custom events with
//! github-telemetry's property and measurement names, posted to the track endpoint of the
//! connection string (`POST {IngestionEndpoint}/v2/track`, a JSON array of envelopes).

use serde_json::{Map, Value, json};
use std::time::Duration;

use super::sink::{Error, Sink};
use crate::processors::workflows::{Item, JobItem, RunItem};
use crate::timestamp::format_rfc3339;

const DEFAULT_INGESTION: &str = "https://dc.services.visualstudio.com";

/// The parts of a connection string we use.
#[derive(Clone, PartialEq)]
pub struct ConnectionString {
    pub instrumentation_key: String,
    pub ingestion_endpoint: String,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionString(<redacted>)")
    }
}

impl ConnectionString {
    /// `InstrumentationKey=…;IngestionEndpoint=https://…/;…`; keys are case-insensitive.
    pub fn parse(s: &str) -> Option<ConnectionString> {
        let mut key = None;
        let mut endpoint = None;
        for part in s.split(';') {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "instrumentationkey" => key = Some(v.trim().to_string()),
                "ingestionendpoint" => endpoint = Some(v.trim().trim_end_matches('/').to_string()),
                _ => {}
            }
        }
        Some(ConnectionString {
            instrumentation_key: key.filter(|k| !k.is_empty())?,
            ingestion_endpoint: endpoint.unwrap_or_else(|| DEFAULT_INGESTION.into()),
        })
    }
}

fn dur(a: Option<f64>, b: Option<f64>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) if b >= a => b - a,
        _ => 0.0,
    }
}

fn time(t: Option<f64>) -> String {
    t.map(format_rfc3339).unwrap_or_default()
}

fn repo_name(full: &str) -> &str {
    full.rsplit('/').next().unwrap_or(full)
}

fn envelope(ikey: &str, name: &str, at: Option<f64>, op: &str, props: Value, meas: Value) -> Value {
    json!({
        "name": "Microsoft.ApplicationInsights.Event",
        "time": at.map(format_rfc3339).unwrap_or_else(|| format_rfc3339(crate::clock::now_unix())),
        "iKey": ikey,
        "tags": {"ai.cloud.role": "devmetrics", "ai.operation.id": op},
        "data": {"baseType": "EventData", "baseData": {
            "ver": 2, "name": name, "properties": props, "measurements": meas
        }}
    })
}

fn run_events(ikey: &str, r: &RunItem) -> Vec<Value> {
    let op = hex::encode(super::otlp::trace_id(r.run_id, r.run_attempt));
    let props = json!({
        "workflow_run_id": r.run_id.to_string(),
        "workflow_id": r.workflow_id.to_string(),
        "workflow_name": r.workflow,
        "run_number": r.run_number.to_string(),
        "run_attempt": r.run_attempt.to_string(),
        "repository_id": r.repo_id.map(|i| i.to_string()).unwrap_or_default(),
        "repository_name": repo_name(&r.repo),
        "repository_full_name": r.repo,
        "status": r.status,
        "conclusion": r.conclusion,
        "event_trigger": r.event,
        "head_branch": r.branch,
        "triggered_by": r.triggered_by,
        "action": r.action,
        "created_at": time(r.created_at),
        "started_at": time(r.started_at),
        "completed_at": time(r.completed_at),
        "run_url": r.url,
    });
    let meas = json!({
        "duration_seconds": dur(r.started_at, r.completed_at),
        "queue_duration_seconds": dur(r.created_at, r.started_at),
    });
    vec![envelope(
        ikey,
        "WorkflowRun",
        r.completed_at,
        &op,
        props,
        meas,
    )]
}

fn job_events(ikey: &str, j: &JobItem) -> Vec<Value> {
    let op = hex::encode(super::otlp::trace_id(j.run_id, j.run_attempt));
    let repo_id = j.repo_id.map(|i| i.to_string()).unwrap_or_default();
    let props = json!({
        "job_id": j.job_id.to_string(),
        "job_name": j.name,
        "workflow_run_id": j.run_id.to_string(),
        "run_attempt": j.run_attempt.to_string(),
        "workflow_name": j.workflow,
        "repository_id": repo_id,
        "repository_name": repo_name(&j.repo),
        "repository_full_name": j.repo,
        "status": j.status,
        "conclusion": j.conclusion,
        "runner_name": j.runner_name,
        "runner_group_name": j.runner_group,
        "labels": j.labels.join(","),
        "action": j.action,
        "created_at": time(j.created_at),
        "started_at": time(j.started_at),
        "completed_at": time(j.completed_at),
        "job_url": j.url,
    });
    let meas = json!({
        "duration_seconds": dur(j.started_at, j.completed_at),
        "queue_duration_seconds": dur(j.created_at, j.started_at),
    });
    let mut out = vec![envelope(
        ikey,
        "WorkflowJob",
        j.completed_at,
        &op,
        props,
        meas,
    )];
    for s in &j.steps {
        if s.started_at.is_none() || s.completed_at.is_none() {
            continue;
        }
        let mut p = Map::new();
        for (k, v) in [
            ("step_id", format!("{}-{}", j.job_id, s.number)),
            ("step_name", s.name.clone()),
            ("step_number", s.number.to_string()),
            ("started_at", time(s.started_at)),
            ("completed_at", time(s.completed_at)),
            ("run_id", j.run_id.to_string()),
            ("parent_job_id", j.job_id.to_string()),
            ("parent_job_name", j.name.clone()),
            ("job_id", j.job_id.to_string()),
            ("job_name", j.name.clone()),
            ("workflow_name", j.workflow.clone()),
            ("repository_id", repo_id.clone()),
            ("repository", repo_name(&j.repo).to_string()),
            ("repository_full_name", j.repo.clone()),
            ("conclusion", s.conclusion.clone()),
            ("status", s.status.clone()),
            ("step_conclusion", s.conclusion.clone()),
            ("step_status", s.status.clone()),
            ("workflow_run_id", j.run_id.to_string()),
            ("job_url", j.url.clone()),
        ] {
            p.insert(k.into(), Value::String(v));
        }
        let meas = json!({"duration_seconds": dur(s.started_at, s.completed_at)});
        out.push(envelope(
            ikey,
            "WorkflowStep",
            s.completed_at,
            &op,
            Value::Object(p),
            meas,
        ));
    }
    out
}

/// The track request body for one item.
pub fn encode(ikey: &str, item: &Item) -> Vec<Value> {
    match item {
        Item::Run(r) => run_events(ikey, r),
        Item::Job(j) => job_events(ikey, j),
    }
}

pub struct AppInsights {
    client: reqwest::Client,
    conn: ConnectionString,
}

impl AppInsights {
    pub fn new(conn: ConnectionString) -> AppInsights {
        AppInsights {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client builds"),
            conn,
        }
    }
}

#[async_trait::async_trait]
impl Sink for AppInsights {
    fn name(&self) -> &'static str {
        "appinsights"
    }

    async fn send(&self, item: &Item) -> Result<(), Error> {
        let body = encode(&self.conn.instrumentation_key, item);
        let resp = self
            .client
            .post(format!("{}/v2/track", self.conn.ingestion_endpoint))
            .header("content-type", "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        // 206 is a partial accept: retrying the whole item may duplicate some events, but
        // dropping would lose the rest, and the events are idempotent to read.
        if status == 200 {
            Ok(())
        } else {
            Err(Error::Status(status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connection_strings() {
        let c = ConnectionString::parse(
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;LiveEndpoint=https://x/",
        )
        .unwrap();
        assert_eq!(
            c.ingestion_endpoint,
            "https://westeurope-5.in.applicationinsights.azure.com"
        );
        assert_eq!(
            ConnectionString::parse("instrumentationkey=k")
                .unwrap()
                .ingestion_endpoint,
            DEFAULT_INGESTION
        );
        assert!(ConnectionString::parse("IngestionEndpoint=https://x").is_none());
        assert!(!format!("{c:?}").contains("0000"));
    }
}
