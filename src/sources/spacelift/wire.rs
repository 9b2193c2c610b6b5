//! The Spacelift GraphQL wire format: request envelopes, the documents we send and the
//! shapes we read. These types stay at the edge; the poller turns them into samples.
//!
//! The four compatibility documents are the replaced exporter's query split per root field
//! (the same split as its per-collector refactor), so one failing root field no longer
//! nulls the others (`workerPools` and `usage` are non-null in the schema: one field error
//! there makes `data` null for the whole document).

use serde::{Deserialize, Serialize};

/// The token exchange, byte for byte as the replaced exporter sends it.
pub const API_KEY_USER: &str =
    "mutation ($id:ID!$secret:String!){apiKeyUser(id: $id, secret: $secret){jwt,validUntil}}";

/// One query group: an operation name and its document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Document {
    pub operation: &'static str,
    pub query: &'static str,
}

pub const PUBLIC_WORKER_POOL: Document = Document {
    operation: "PrometheusExporterPublicWorkerPool",
    query: "query PrometheusExporterPublicWorkerPool{publicWorkerPool{parallelism,busyWorkers,pendingRuns}}",
};
pub const WORKER_POOLS: Document = Document {
    operation: "PrometheusExporterWorkerPools",
    query: "query PrometheusExporterWorkerPools{workerPools{id,name,pendingRuns,busyWorkers,workers{id,drained}}}",
};
pub const USAGE: Document = Document {
    operation: "PrometheusExporterUsage",
    query: "query PrometheusExporterUsage{usage{billingPeriodStart,billingPeriodEnd,usedPrivateMinutes,usedPublicMinutes,usedSeats}}",
};
pub const AGGREGATES: Document = Document {
    operation: "PrometheusExporterAggregates",
    query: "query PrometheusExporterAggregates{metrics{stacksCountByState{value,labels},resourcesCountByDrift{value,labels},avgStackSizeByResourceCount{value,labels},averageRunDuration{value,labels},medianRunDuration{value,labels}}}",
};
/// Runs waiting on people: fields of the same `metrics` root that the replaced exporter's
/// "parity" pull request (#65) proposed; a separate group so an older schema without them
/// fails (as unsupported) alone.
pub const ATTENTION: Document = Document {
    operation: "DevmetricsAttention",
    query: "query DevmetricsAttention{metrics{needsApprovalRuns{id},runsRequiringAttention{id}}}",
};
/// Per-stack state, recent runs and managed resources, one page of `searchStacks`.
/// Not used by the replaced exporter; the field names follow the public schema as used by
/// spacectl and the Terraform provider, not a live capture.
pub const STACKS: Document = Document {
    operation: "DevmetricsStacks",
    query: "query DevmetricsStacks($input:SearchInput!){searchStacks(input: $input){edges{node{id,name,space,state,runs{type,state},entities{drifted}}},pageInfo{endCursor,hasNextPage}}}",
};

#[derive(Debug, Serialize)]
pub struct Request<'a> {
    pub query: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variables: Option<serde_json::Value>,
    #[serde(rename = "operationName", skip_serializing_if = "Option::is_none")]
    pub operation_name: Option<&'a str>,
}

/// Every GraphQL answer: `data` (possibly null or partial) and `errors`.
#[derive(Debug, Deserialize)]
pub struct Response<T> {
    pub data: Option<T>,
    #[serde(default)]
    pub errors: Vec<GraphQlError>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct GraphQlError {
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyUserData {
    pub api_key_user: Option<ApiKeyUser>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyUser {
    pub jwt: String,
    pub valid_until: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicWorkerPoolData {
    pub public_worker_pool: PublicWorkerPool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PublicWorkerPool {
    pub parallelism: i64,
    pub busy_workers: i64,
    pub pending_runs: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolsData {
    pub worker_pools: Vec<WorkerPool>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPool {
    pub id: String,
    pub name: String,
    pub pending_runs: i64,
    pub busy_workers: i64,
    pub workers: Vec<Worker>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Worker {
    pub id: String,
    pub drained: bool,
}

#[derive(Debug, Deserialize)]
pub struct UsageData {
    pub usage: Usage,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub billing_period_start: i64,
    pub billing_period_end: i64,
    pub used_private_minutes: i64,
    pub used_public_minutes: i64,
    pub used_seats: i64,
}

#[derive(Debug, Deserialize)]
pub struct AggregatesData {
    /// Nullable in the schema (an account without the feature answers null).
    pub metrics: Option<Aggregates>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Aggregates {
    pub stacks_count_by_state: Vec<DataPoint>,
    pub resources_count_by_drift: Vec<DataPoint>,
    pub avg_stack_size_by_resource_count: Vec<DataPoint>,
    pub average_run_duration: Vec<DataPoint>,
    pub median_run_duration: Vec<DataPoint>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct DataPoint {
    pub value: f64,
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct AttentionData {
    pub metrics: Option<Attention>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attention {
    pub needs_approval_runs: Vec<RunRef>,
    pub runs_requiring_attention: Vec<RunRef>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct RunRef {
    pub id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StacksData {
    pub search_stacks: StackConnection,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackConnection {
    pub edges: Vec<StackEdge>,
    pub page_info: PageInfo,
}

#[derive(Debug, Deserialize)]
pub struct StackEdge {
    pub node: StackNode,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageInfo {
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct StackNode {
    pub id: String,
    pub name: String,
    pub space: String,
    pub state: String,
    #[serde(default)]
    pub runs: Vec<RunNode>,
    #[serde(default)]
    pub entities: Vec<EntityNode>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct RunNode {
    #[serde(rename = "type")]
    pub run_type: String,
    pub state: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct EntityNode {
    /// Unix time drift was detected; null when the resource is in sync.
    pub drifted: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_omits_empty_fields() {
        let body = serde_json::to_string(&Request {
            query: USAGE.query,
            variables: None,
            operation_name: Some(USAGE.operation),
        })
        .unwrap();
        assert!(!body.contains("variables"));
        assert!(body.contains(r#""operationName":"PrometheusExporterUsage""#));
    }

    #[test]
    fn documents_name_their_operation() {
        for d in [
            PUBLIC_WORKER_POOL,
            WORKER_POOLS,
            USAGE,
            AGGREGATES,
            ATTENTION,
            STACKS,
        ] {
            assert!(d.query.starts_with(&format!("query {}", d.operation)));
        }
    }
}
