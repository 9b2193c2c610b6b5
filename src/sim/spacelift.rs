//! The Spacelift fake: `POST /graphql` answering the `apiKeyUser` mutation, the replaced
//! exporter's documents (whole and split per root field) and our per-stack query, from a
//! deterministic account that knows its ground truth.
//!
//! It is deliberately strict, like the Go client the replaced exporter used: it accepts only
//! the exact documents the exporter sends, answers exactly the selected fields, wants a
//! bearer token on queries and none on the exchange, and refuses expired or revoked tokens
//! with the GraphQL `unauthorized` error (HTTP 200) that Spacelift returns.
//!
//! Every session the fake issues is a machine session (an API key's), and like Spacelift it
//! refuses per-stack data (`searchStacks`, whose nodes select `Stack.state`) to machine
//! sessions with a GraphQL "not available for machine sessions" error; the research
//! (spacelift-copilot.md A.3) says that gate holds everywhere. [`Sim::gate_stacks`] lifts it
//! for tests of the per-stack path.
//!
//! Knobs beyond [`super::Faults`]: the per-stack gate, per-root-field GraphQL errors (such
//! as the same gate on older Self-Hosted releases) and delays, token lifetime, token
//! revocation and secret rotation.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{FakeServer, Faults};

pub const KEY_ID: &str = "01SIMULATEDKEY0000000000AA";
pub const KEY_SECRET: &str = "simulated-spacelift-secret";
pub const MACHINE_SESSION_GATE: &str = "not available for machine sessions";

/// The documents the fake understands, with the root fields each selects. Written out
/// here rather than taken from the client, so a typo on either side fails a test.
const DOCUMENTS: &[(&str, &[&str])] = &[
    (
        "query PrometheusExporter{publicWorkerPool{parallelism,busyWorkers,pendingRuns},workerPools{id,name,pendingRuns,busyWorkers,workers{id,drained}},usage{billingPeriodStart,billingPeriodEnd,usedPrivateMinutes,usedPublicMinutes,usedSeats},metrics{stacksCountByState{value,labels},resourcesCountByDrift{value,labels},avgStackSizeByResourceCount{value,labels},averageRunDuration{value,labels},medianRunDuration{value,labels}}}",
        &["publicWorkerPool", "workerPools", "usage", "metrics"],
    ),
    (
        "{publicWorkerPool{parallelism,busyWorkers,pendingRuns},workerPools{id,name,pendingRuns,busyWorkers,workers{id,drained}},usage{billingPeriodStart,billingPeriodEnd,usedPrivateMinutes,usedPublicMinutes,usedSeats},metrics{stacksCountByState{value,labels},resourcesCountByDrift{value,labels},avgStackSizeByResourceCount{value,labels},averageRunDuration{value,labels},medianRunDuration{value,labels}}}",
        &["publicWorkerPool", "workerPools", "usage", "metrics"],
    ),
    (
        "query PrometheusExporterPublicWorkerPool{publicWorkerPool{parallelism,busyWorkers,pendingRuns}}",
        &["publicWorkerPool"],
    ),
    (
        "query PrometheusExporterWorkerPools{workerPools{id,name,pendingRuns,busyWorkers,workers{id,drained}}}",
        &["workerPools"],
    ),
    (
        "query PrometheusExporterUsage{usage{billingPeriodStart,billingPeriodEnd,usedPrivateMinutes,usedPublicMinutes,usedSeats}}",
        &["usage"],
    ),
    (
        "query PrometheusExporterAggregates{metrics{stacksCountByState{value,labels},resourcesCountByDrift{value,labels},avgStackSizeByResourceCount{value,labels},averageRunDuration{value,labels},medianRunDuration{value,labels}}}",
        &["metrics"],
    ),
    (
        "query DevmetricsAttention{metrics{needsApprovalRuns{id},runsRequiringAttention{id}}}",
        &["metrics/attention"],
    ),
    (
        "query DevmetricsStacks($input:SearchInput!){searchStacks(input: $input){edges{node{id,name,space,state,runs{type,state},entities{drifted}}},pageInfo{endCursor,hasNextPage}}}",
        &["searchStacks"],
    ),
];
const EXCHANGE: &str =
    "mutation ($id:ID!$secret:String!){apiKeyUser(id: $id, secret: $secret){jwt,validUntil}}";

pub const RUN_TYPES: &[&str] = &["TRACKED", "PROPOSED", "TASK", "TESTING"];
const ACTIVE_STATES: &[&str] = &["QUEUED", "PREPARING", "PLANNING", "UNCONFIRMED", "APPLYING"];
const SPACES: &[&str] = &["root", "platform-01J0", "payments-01J1", "sandbox-01J2"];

#[derive(Clone, Debug, PartialEq)]
pub struct PublicPool {
    pub parallelism: i64,
    pub busy_workers: i64,
    pub pending_runs: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub pending_runs: i64,
    pub busy_workers: i64,
    /// (worker id, drained)
    pub workers: Vec<(String, bool)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    pub billing_period_start: i64,
    pub billing_period_end: i64,
    pub used_private_minutes: i64,
    pub used_public_minutes: i64,
    pub used_seats: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub run_type: String,
    pub state: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    pub id: String,
    pub name: String,
    pub space: String,
    /// Its most recent tracked run's state, `NONE` without runs (Spacelift's rule).
    pub state: String,
    /// Most recent first.
    pub runs: Vec<Run>,
    /// Per managed resource: when drift was detected, if it was.
    pub resources: Vec<Option<i64>>,
}

/// The whole simulated account: the ground truth tests compare against.
#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub public_pool: PublicPool,
    pub worker_pools: Vec<Pool>,
    pub usage: Usage,
    pub stacks: Vec<Stack>,
    /// Durations of finished runs in the server's window, nanoseconds.
    pub run_durations_ns: Vec<f64>,
}

impl Account {
    pub fn generate(seed: u64, stacks: usize) -> Account {
        let mut rng = super::rng(seed);
        let pools = ["production", "staging", "gpu-builders"];
        let worker_pools = pools
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let n = rng.random_range(1..7);
                Pool {
                    id: format!("01HQZX{:020}", seed * 10 + i as u64),
                    name: name.to_string(),
                    pending_runs: rng.random_range(0..6),
                    busy_workers: rng.random_range(0..=n),
                    workers: (0..n)
                        .map(|w| (format!("{name}-worker-{w}"), rng.random_range(0..5) == 0))
                        .collect(),
                }
            })
            .collect();
        // The current billing period, so "time until usage resets" means something.
        let today = crate::clock::now_secs() - crate::clock::now_secs() % 86_400;
        let period_start = today - (seed as i64 % 20 + 1) * 86_400;
        let mut account = Account {
            public_pool: PublicPool {
                parallelism: 10,
                busy_workers: rng.random_range(0..4),
                pending_runs: rng.random_range(0..4),
            },
            worker_pools,
            usage: Usage {
                billing_period_start: period_start,
                billing_period_end: period_start + 31 * 86_400,
                used_private_minutes: rng.random_range(1_000..20_000),
                used_public_minutes: rng.random_range(0..2_000),
                used_seats: rng.random_range(3..40),
            },
            stacks: Vec::new(),
            run_durations_ns: Vec::new(),
        };
        for i in 0..stacks {
            let space = SPACES[i % SPACES.len()].to_string();
            let id = format!("{}-stack-{i:02}", space.split('-').next().unwrap_or("root"));
            let runs: Vec<Run> = (0..rng.random_range(0..7))
                .map(|_| Run {
                    run_type: run_type(&mut rng).to_string(),
                    state: if rng.random_range(0..4) == 0 {
                        "FAILED"
                    } else {
                        "FINISHED"
                    }
                    .to_string(),
                })
                .collect();
            let resources = (0..rng.random_range(0..30))
                .map(|_| (rng.random_range(0..12) == 0).then_some(period_start + 3_600))
                .collect();
            for _ in &runs {
                account
                    .run_durations_ns
                    .push(rng.random_range(30..900) as f64 * 1e9);
            }
            let mut s = Stack {
                name: format!("Stack {i}"),
                id,
                space,
                state: String::new(),
                runs,
                resources,
            };
            s.state = stack_state(&s.runs);
            account.stacks.push(s);
        }
        account.stacks.sort_by(|a, b| a.id.cmp(&b.id));
        account
    }

    /// Moves the account on: runs start and finish, drift appears, queues and usage move.
    pub fn tick(&mut self, rng: &mut StdRng) {
        let now = crate::clock::now_secs();
        if !self.stacks.is_empty() {
            let i = rng.random_range(0..self.stacks.len());
            let s = &mut self.stacks[i];
            match s.runs.first_mut() {
                Some(r) if ACTIVE_STATES.contains(&r.state.as_str()) => {
                    let pos = ACTIVE_STATES
                        .iter()
                        .position(|a| *a == r.state)
                        .unwrap_or(0);
                    if pos + 1 < ACTIVE_STATES.len() && rng.random_range(0..2) == 0 {
                        r.state = ACTIVE_STATES[pos + 1].to_string();
                    } else {
                        r.state = if rng.random_range(0..5) == 0 {
                            "FAILED"
                        } else {
                            "FINISHED"
                        }
                        .to_string();
                        self.run_durations_ns
                            .push(rng.random_range(30..900) as f64 * 1e9);
                    }
                }
                _ => {
                    let run_type = run_type(rng).to_string();
                    s.runs.insert(
                        0,
                        Run {
                            run_type,
                            state: "QUEUED".into(),
                        },
                    );
                    // Stack.runs answers the most recent page only.
                    s.runs.truncate(50);
                }
            }
            s.state = stack_state(&s.runs);
            let j = rng.random_range(0..self.stacks.len());
            let t = &mut self.stacks[j];
            if !t.resources.is_empty() {
                let k = rng.random_range(0..t.resources.len());
                t.resources[k] = match t.resources[k] {
                    None if rng.random_range(0..3) == 0 => Some(now),
                    Some(_) if rng.random_range(0..3) == 0 => None,
                    d => d,
                };
            }
        }
        let p = &mut self.public_pool;
        p.busy_workers = (p.busy_workers + rng.random_range(-1..=1)).clamp(0, p.parallelism);
        p.pending_runs = (p.pending_runs + rng.random_range(-1..=1)).max(0);
        for pool in &mut self.worker_pools {
            pool.pending_runs = (pool.pending_runs + rng.random_range(-1..=1)).max(0);
            let n = pool.workers.len() as i64;
            pool.busy_workers = (pool.busy_workers + rng.random_range(-1..=1)).clamp(0, n);
        }
        self.usage.used_private_minutes += rng.random_range(0..5);
        self.usage.used_public_minutes += rng.random_range(0..2);
    }

    // ── ground truth, exactly as the fake serves it ─────────────────────────────────────

    pub fn stacks_count_by_state(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for s in &self.stacks {
            *m.entry(s.state.clone()).or_default() += 1.0;
        }
        m
    }

    /// (IN_SYNC, DRIFTED) resource counts.
    pub fn resources_by_drift(&self) -> (f64, f64) {
        let all: Vec<&Option<i64>> = self.stacks.iter().flat_map(|s| &s.resources).collect();
        let drifted = all.iter().filter(|d| d.is_some()).count();
        ((all.len() - drifted) as f64, drifted as f64)
    }

    /// Runs waiting for confirmation of their plan.
    pub fn runs_needing_approval(&self) -> usize {
        self.stacks
            .iter()
            .flat_map(|s| &s.runs)
            .filter(|r| r.state == "UNCONFIRMED")
            .count()
    }

    /// Stacks whose latest run failed or waits for confirmation: one run each.
    pub fn runs_requiring_attention(&self) -> usize {
        self.stacks
            .iter()
            .filter_map(|s| s.runs.first())
            .filter(|r| r.state == "FAILED" || r.state == "UNCONFIRMED")
            .count()
    }

    pub fn avg_stack_size(&self) -> Option<f64> {
        if self.stacks.is_empty() {
            return None;
        }
        let total: usize = self.stacks.iter().map(|s| s.resources.len()).sum();
        Some(total as f64 / self.stacks.len() as f64)
    }

    pub fn average_run_duration_ns(&self) -> Option<f64> {
        let d = &self.run_durations_ns;
        (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
    }

    pub fn median_run_duration_ns(&self) -> Option<f64> {
        let mut d = self.run_durations_ns.clone();
        if d.is_empty() {
            return None;
        }
        d.sort_by(f64::total_cmp);
        let n = d.len();
        Some(if n % 2 == 1 {
            d[n / 2]
        } else {
            (d[n / 2 - 1] + d[n / 2]) / 2.0
        })
    }
}

/// Tracked runs dominate real accounts; proposed runs (PR previews) come next.
fn run_type(rng: &mut StdRng) -> &'static str {
    match rng.random_range(0..20) {
        0..10 => "TRACKED",
        10..16 => "PROPOSED",
        16..19 => "TASK",
        _ => "TESTING",
    }
}

fn stack_state(runs: &[Run]) -> String {
    runs.iter()
        .find(|r| r.run_type == "TRACKED")
        .map(|r| r.state.clone())
        .unwrap_or_else(|| "NONE".into())
}

/// The fake's state and knobs, shared with the test that owns it.
pub struct Sim {
    pub key_id: String,
    pub key_secret: Mutex<String>,
    pub account: Mutex<Account>,
    /// Lifetime of issued tokens (`validUntil - now`), seconds.
    pub token_ttl_secs: AtomicI64,
    tokens: Mutex<HashMap<String, i64>>,
    pub exchanges: AtomicU64,
    pub rejected_exchanges: AtomicU64,
    pub unauthorized_answers: AtomicU64,
    /// Set if an exchange ever arrived with an Authorization or client-type header.
    pub exchange_had_headers: AtomicBool,
    /// Set if a query ever arrived without `Spacelift-Client-Type: prometheus-exporter`.
    pub query_missing_client_type: AtomicBool,
    /// Root field → GraphQL error message answered instead of data.
    pub field_errors: Mutex<BTreeMap<String, String>>,
    /// `searchStacks` answers every page with the first page's cursor and more to come, as
    /// a broken API might: pagination that never ends.
    pub looping_cursor: AtomicBool,
    /// Whether `searchStacks` is refused to machine sessions (every session here), as
    /// Spacelift does. On by default.
    pub stacks_gated_for_machine_sessions: AtomicBool,
    /// Root field → added latency in milliseconds.
    pub field_delay_ms: Mutex<BTreeMap<String, u64>>,
    /// Operation names of the queries answered (not the exchange), in order.
    pub operations: Mutex<Vec<String>>,
    rng: Mutex<StdRng>,
}

impl Sim {
    pub fn new(seed: u64, stacks: usize) -> Arc<Sim> {
        Arc::new(Sim {
            key_id: KEY_ID.into(),
            key_secret: Mutex::new(KEY_SECRET.into()),
            account: Mutex::new(Account::generate(seed, stacks)),
            token_ttl_secs: AtomicI64::new(3600),
            tokens: Mutex::new(HashMap::new()),
            exchanges: AtomicU64::new(0),
            rejected_exchanges: AtomicU64::new(0),
            unauthorized_answers: AtomicU64::new(0),
            exchange_had_headers: AtomicBool::new(false),
            query_missing_client_type: AtomicBool::new(false),
            field_errors: Mutex::new(BTreeMap::new()),
            looping_cursor: AtomicBool::new(false),
            stacks_gated_for_machine_sessions: AtomicBool::new(true),
            field_delay_ms: Mutex::new(BTreeMap::new()),
            operations: Mutex::new(Vec::new()),
            rng: Mutex::new(super::rng(seed ^ 0x5ace_11f7)),
        })
    }

    pub fn account(&self) -> Account {
        self.account.lock().clone()
    }

    pub fn tick(&self) {
        let mut rng = self.rng.lock();
        self.account.lock().tick(&mut rng);
    }

    /// Invalidates every issued token, as a server-side expiry or revocation would.
    pub fn revoke_tokens(&self) {
        self.tokens.lock().clear();
    }

    pub fn fail_field(&self, field: &str, message: &str) {
        self.field_errors
            .lock()
            .insert(field.to_string(), message.to_string());
    }

    /// `false` serves per-stack data to API keys, as if Spacelift lifted its gate.
    pub fn gate_stacks(&self, gated: bool) {
        self.stacks_gated_for_machine_sessions
            .store(gated, Ordering::Relaxed);
    }

    pub fn delay_field(&self, field: &str, ms: u64) {
        self.field_delay_ms.lock().insert(field.to_string(), ms);
    }

    pub fn clear_knobs(&self) {
        self.field_errors.lock().clear();
        self.field_delay_ms.lock().clear();
    }

    fn issue_token(&self) -> (String, i64) {
        let n = self.exchanges.fetch_add(1, Ordering::Relaxed) + 1;
        let valid_until = crate::clock::now_secs() + self.token_ttl_secs.load(Ordering::Relaxed);
        // Shaped like a JWT (three base64url parts); nothing verifies the signature.
        use base64::Engine;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let jwt = format!(
            "{}.{}.c2ltdWxhdGVk{n}",
            b64(&json!({"alg": "HS256", "typ": "JWT"})),
            b64(&json!({"sub": self.key_id, "exp": valid_until, "n": n})),
        );
        self.tokens.lock().insert(jwt.clone(), valid_until);
        (jwt, valid_until)
    }

    fn token_valid(&self, jwt: &str) -> bool {
        self.tokens
            .lock()
            .get(jwt)
            .is_some_and(|until| crate::clock::now_secs() < *until)
    }
}

fn error(message: &str, path: Option<&str>) -> Value {
    match path {
        Some(p) => json!({"data": null, "errors": [{"message": message, "path": [p]}]}),
        None => json!({"errors": [{"message": message}]}),
    }
}

async fn graphql(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(error("invalid JSON body", None)),
        )
            .into_response();
    };
    let query = req.get("query").and_then(Value::as_str).unwrap_or("");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if query == EXCHANGE {
        if header("authorization").is_some() || header("spacelift-client-type").is_some() {
            sim.exchange_had_headers.store(true, Ordering::Relaxed);
        }
        let var = |k: &str| {
            req.pointer(&format!("/variables/{k}"))
                .and_then(Value::as_str)
        };
        let ok = var("id") == Some(sim.key_id.as_str())
            && var("secret") == Some(sim.key_secret.lock().as_str());
        if !ok {
            sim.rejected_exchanges.fetch_add(1, Ordering::Relaxed);
            return axum::Json(error("unauthorized", Some("apiKeyUser"))).into_response();
        }
        let (jwt, valid_until) = sim.issue_token();
        return axum::Json(
            json!({"data": {"apiKeyUser": {"jwt": jwt, "validUntil": valid_until}}}),
        )
        .into_response();
    }
    let Some((_, fields)) = DOCUMENTS.iter().find(|(d, _)| *d == query) else {
        return axum::Json(error("the fake does not know this document", None)).into_response();
    };
    if header("spacelift-client-type") != Some("prometheus-exporter") {
        sim.query_missing_client_type.store(true, Ordering::Relaxed);
    }
    let token = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| sim.token_valid(t)) {
        sim.unauthorized_answers.fetch_add(1, Ordering::Relaxed);
        return axum::Json(error("unauthorized", None)).into_response();
    }
    sim.operations.lock().push(
        req.get("operationName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    );
    // "metrics/attention" is the `metrics` root with another selection: knobs act on roots.
    let root = |f: &str| f.split('/').next().unwrap_or(f).to_string();
    let delay: u64 = {
        let d = sim.field_delay_ms.lock();
        fields
            .iter()
            .filter_map(|f| d.get(&root(f)))
            .max()
            .copied()
            .unwrap_or(0)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let gated = sim
        .stacks_gated_for_machine_sessions
        .load(Ordering::Relaxed)
        && fields.contains(&"searchStacks");
    let failing = if gated {
        Some(("searchStacks".to_string(), MACHINE_SESSION_GATE.to_string()))
    } else {
        let e = sim.field_errors.lock();
        // A knob on "metrics/attention" fails that selection only; one on "metrics" both.
        fields.iter().find_map(|f| {
            e.get(*f)
                .or_else(|| e.get(&root(f)))
                .map(|m| (root(f), m.clone()))
        })
    };
    if let Some((field, message)) = failing {
        // Non-null roots: one field error nulls the whole `data`.
        return axum::Json(error(&message, Some(&field))).into_response();
    }
    let account = sim.account();
    let mut data = serde_json::Map::new();
    for f in *fields {
        let v = match *f {
            "publicWorkerPool" => json!({
                "parallelism": account.public_pool.parallelism,
                "busyWorkers": account.public_pool.busy_workers,
                "pendingRuns": account.public_pool.pending_runs,
            }),
            "workerPools" => Value::Array(
                account
                    .worker_pools
                    .iter()
                    .map(|p| {
                        json!({
                            "id": p.id, "name": p.name, "pendingRuns": p.pending_runs,
                            "busyWorkers": p.busy_workers,
                            "workers": p.workers.iter()
                                .map(|(id, drained)| json!({"id": id, "drained": drained}))
                                .collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            ),
            "usage" => json!({
                "billingPeriodStart": account.usage.billing_period_start,
                "billingPeriodEnd": account.usage.billing_period_end,
                "usedPrivateMinutes": account.usage.used_private_minutes,
                "usedPublicMinutes": account.usage.used_public_minutes,
                "usedSeats": account.usage.used_seats,
            }),
            "metrics" => aggregates(&account),
            "metrics/attention" => {
                let ids = |n: usize, tag: &str| {
                    (0..n)
                        .map(|i| json!({"id": format!("{tag}-{i:04}")}))
                        .collect::<Vec<_>>()
                };
                json!({
                    "needsApprovalRuns": ids(account.runs_needing_approval(), "approve"),
                    "runsRequiringAttention": ids(account.runs_requiring_attention(), "attend"),
                })
            }
            "searchStacks" => {
                let mut v = search_stacks(&account, req.pointer("/variables/input"));
                if sim.looping_cursor.load(Ordering::Relaxed) {
                    let first = account.stacks.first().map(|s| s.id.clone());
                    v["pageInfo"] = json!({"endCursor": first, "hasNextPage": true});
                }
                v
            }
            _ => Value::Null,
        };
        data.insert(root(f), v);
    }
    axum::Json(json!({ "data": data })).into_response()
}

fn aggregates(a: &Account) -> Value {
    let point = |v: f64, label: Option<&str>| match label {
        Some(l) => json!({"value": v, "labels": [l]}),
        None => json!({"value": v, "labels": []}),
    };
    let (in_sync, drifted) = a.resources_by_drift();
    json!({
        "stacksCountByState": a.stacks_count_by_state().iter()
            .map(|(s, n)| point(*n, Some(s))).collect::<Vec<_>>(),
        "resourcesCountByDrift": [point(in_sync, Some("IN_SYNC")), point(drifted, Some("DRIFTED"))],
        "avgStackSizeByResourceCount": a.avg_stack_size().map(|v| point(v, None)).into_iter().collect::<Vec<_>>(),
        "averageRunDuration": a.average_run_duration_ns().map(|v| point(v, None)).into_iter().collect::<Vec<_>>(),
        "medianRunDuration": a.median_run_duration_ns().map(|v| point(v, None)).into_iter().collect::<Vec<_>>(),
    })
}

/// Cursor pagination over stacks ordered by id; the cursor is the last id of the page.
fn search_stacks(a: &Account, input: Option<&Value>) -> Value {
    let first = input
        .and_then(|i| i.get("first"))
        .and_then(Value::as_u64)
        .unwrap_or(50)
        .clamp(1, 500) as usize;
    let after = input.and_then(|i| i.get("after")).and_then(Value::as_str);
    let start = after
        .map(|c| {
            a.stacks
                .iter()
                .position(|s| s.id.as_str() > c)
                .unwrap_or(a.stacks.len())
        })
        .unwrap_or(0);
    let page: Vec<&Stack> = a.stacks.iter().skip(start).take(first).collect();
    let has_next = start + page.len() < a.stacks.len();
    json!({
        "edges": page.iter().map(|s| json!({"node": {
            "id": s.id, "name": s.name, "space": s.space, "state": s.state,
            "runs": s.runs.iter().map(|r| json!({"type": r.run_type, "state": r.state})).collect::<Vec<_>>(),
            "entities": s.resources.iter().map(|d| json!({"drifted": d})).collect::<Vec<_>>(),
        }})).collect::<Vec<_>>(),
        "pageInfo": {"endCursor": page.last().map(|s| s.id.clone()), "hasNextPage": has_next},
    })
}

/// A running Spacelift fake.
pub struct SpaceliftFake {
    pub server: Arc<FakeServer>,
    pub sim: Arc<Sim>,
}

impl SpaceliftFake {
    pub async fn start(seed: u64, stacks: usize) -> std::io::Result<SpaceliftFake> {
        let sim = Sim::new(seed, stacks);
        let router = Router::new()
            .route("/graphql", post(graphql))
            .with_state(sim.clone());
        let server = FakeServer::start("spacelift", router, Faults::new(seed)).await?;
        Ok(SpaceliftFake {
            server: Arc::new(server),
            sim,
        })
    }

    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Ticks the account every `every` until the server is dropped (for `demo`).
    pub fn animate(&self, every: Duration) {
        let server: Weak<FakeServer> = Arc::downgrade(&self.server);
        let sim = self.sim.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.tick().await;
            loop {
                t.tick().await;
                if server.upgrade().is_none() {
                    return;
                }
                sim.tick();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_truthful() {
        let a = Account::generate(7, 20);
        assert_eq!(a, Account::generate(7, 20));
        assert_ne!(a, Account::generate(8, 20));
        let states: f64 = a.stacks_count_by_state().values().sum();
        assert_eq!(states, 20.0);
        let mut b = a.clone();
        let mut rng = crate::sim::rng(1);
        for _ in 0..50 {
            b.tick(&mut rng);
        }
        assert_ne!(a, b, "ticks change the account");
        assert_eq!(b.stacks.len(), 20);
    }

    #[test]
    fn median_of_even_and_odd() {
        let mut a = Account::generate(1, 0);
        a.run_durations_ns = vec![3.0, 1.0, 2.0];
        assert_eq!(a.median_run_duration_ns(), Some(2.0));
        a.run_durations_ns.push(10.0);
        assert_eq!(a.median_run_duration_ns(), Some(2.5));
        assert_eq!(a.avg_stack_size(), None);
    }
}
