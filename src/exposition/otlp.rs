//! OTLP traces for GitHub Actions: a span per run attempt, a child span per job and a
//! grandchild per step, with the payloads' real start and end times.
//!
//! Trace and span ids are derived from (run id, attempt), job id and step number, so every
//! delivery of the same run or job yields the same ids: a redelivery overwrites rather than
//! duplicates, and jobs sent before their run still land under it.
//!
//! Both OTLP transports are supported: HTTP/protobuf and gRPC (cleartext HTTP/2). The
//! protobuf encoding is written by hand (a dozen fields of
//! `opentelemetry/proto/trace/v1`), which keeps prost and the generated OTLP crates out of
//! the build; the tests decode it with an independent wire-format reader.

use sha2::{Digest, Sha256};
use std::time::Duration;

use super::sink::{Error, Sink};
use crate::processors::workflows::{Item, JobItem, RunItem};

pub fn trace_id(run_id: u64, attempt: u32) -> [u8; 16] {
    let d = Sha256::digest(format!("devmetrics/run/{run_id}/{attempt}"));
    d[..16].try_into().expect("16 of 32 bytes")
}

fn span_id(s: String) -> [u8; 8] {
    let d = Sha256::digest(s);
    d[..8].try_into().expect("8 of 32 bytes")
}

pub fn run_span_id(run_id: u64, attempt: u32) -> [u8; 8] {
    span_id(format!("devmetrics/run/{run_id}/{attempt}/span"))
}

pub fn job_span_id(job_id: u64) -> [u8; 8] {
    span_id(format!("devmetrics/job/{job_id}"))
}

pub fn step_span_id(job_id: u64, number: u32) -> [u8; 8] {
    span_id(format!("devmetrics/job/{job_id}/step/{number}"))
}

// ── protobuf wire format ───────────────────────────────────────────────────────────────

pub(super) struct Pb(pub(super) Vec<u8>);

impl Pb {
    pub(super) fn new() -> Pb {
        Pb(Vec::new())
    }
    pub(super) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub(super) fn tag(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    pub(super) fn bytes(&mut self, field: u32, b: &[u8]) {
        self.tag(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    pub(super) fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }
    pub(super) fn message(&mut self, field: u32, m: Pb) {
        self.bytes(field, &m.0);
    }
    pub(super) fn fixed64(&mut self, field: u32, v: u64) {
        self.tag(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.tag(field, 0);
            self.varint(v);
        }
    }
}

pub(super) enum Attr<'a> {
    Str(&'a str),
    Int(i64),
    Double(f64),
}

pub(super) fn key_value(key: &str, v: Attr) -> Pb {
    let mut any = Pb::new();
    match v {
        Attr::Str(s) => any.bytes(1, s.as_bytes()),
        Attr::Int(i) => {
            any.tag(3, 0);
            any.varint(i as u64);
        }
        Attr::Double(d) => {
            any.tag(4, 1);
            any.0.extend_from_slice(&d.to_le_bytes());
        }
    }
    let mut kv = Pb::new();
    kv.string(1, key);
    kv.message(2, any);
    kv
}

struct SpanData<'a> {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: &'a str,
    start: f64,
    end: f64,
    attrs: Vec<(&'static str, Attr<'a>)>,
    conclusion: &'a str,
}

fn nanos(t: f64) -> u64 {
    (t.max(0.0) * 1e9).round() as u64
}

fn span(s: SpanData) -> Pb {
    let mut p = Pb::new();
    p.bytes(1, &s.trace_id);
    p.bytes(2, &s.span_id);
    if let Some(parent) = s.parent {
        p.bytes(4, &parent);
    }
    p.string(5, s.name);
    p.uint(6, 1); // SPAN_KIND_INTERNAL
    p.fixed64(7, nanos(s.start));
    p.fixed64(8, nanos(s.end.max(s.start)));
    for (k, v) in s.attrs {
        p.message(9, key_value(k, v));
    }
    // Status: OK for success, ERROR for failure/timed_out, unset otherwise.
    let code = match s.conclusion {
        "success" => 1,
        "failure" | "timed_out" | "startup_failure" => 2,
        _ => 0,
    };
    if code != 0 {
        let mut st = Pb::new();
        if code == 2 {
            st.string(2, s.conclusion);
        }
        st.uint(3, code);
        p.message(15, st);
    }
    p
}

fn run_span(r: &RunItem) -> Option<Pb> {
    let (start, end) = (r.started_at?, r.completed_at?);
    Some(span(SpanData {
        trace_id: trace_id(r.run_id, r.run_attempt),
        span_id: run_span_id(r.run_id, r.run_attempt),
        parent: None,
        name: &r.workflow,
        start,
        end,
        attrs: vec![
            ("cicd.pipeline.name", Attr::Str(&r.workflow)),
            ("cicd.pipeline.run.id", Attr::Int(r.run_id as i64)),
            ("github.run_attempt", Attr::Int(r.run_attempt as i64)),
            ("github.run_number", Attr::Int(r.run_number as i64)),
            ("github.repository", Attr::Str(&r.repo)),
            ("github.event", Attr::Str(&r.event)),
            ("github.head_branch", Attr::Str(&r.branch)),
            ("github.conclusion", Attr::Str(&r.conclusion)),
            ("github.triggered_by", Attr::Str(&r.triggered_by)),
            ("url.full", Attr::Str(&r.url)),
        ],
        conclusion: &r.conclusion,
    }))
}

fn job_spans(j: &JobItem) -> Vec<Pb> {
    let tid = trace_id(j.run_id, j.run_attempt);
    let jid = job_span_id(j.job_id);
    let mut out = Vec::new();
    let (Some(start), Some(end)) = (j.started_at.or(j.created_at), j.completed_at) else {
        return out;
    };
    let queue = match (j.created_at, j.started_at) {
        (Some(c), Some(s)) if s >= c => s - c,
        _ => 0.0,
    };
    let labels = j.labels.join(",");
    out.push(span(SpanData {
        trace_id: tid,
        span_id: jid,
        parent: Some(run_span_id(j.run_id, j.run_attempt)),
        name: &j.name,
        start,
        end,
        attrs: vec![
            ("cicd.pipeline.task.name", Attr::Str(&j.name)),
            ("cicd.pipeline.task.run.id", Attr::Int(j.job_id as i64)),
            ("cicd.pipeline.name", Attr::Str(&j.workflow)),
            ("cicd.pipeline.run.id", Attr::Int(j.run_id as i64)),
            ("github.repository", Attr::Str(&j.repo)),
            ("github.conclusion", Attr::Str(&j.conclusion)),
            ("github.runner_name", Attr::Str(&j.runner_name)),
            ("github.runner_group_name", Attr::Str(&j.runner_group)),
            ("github.labels", Attr::Str(&labels)),
            ("github.queue_duration_seconds", Attr::Double(queue)),
        ],
        conclusion: &j.conclusion,
    }));
    for s in &j.steps {
        let (Some(a), Some(b)) = (s.started_at, s.completed_at) else {
            continue;
        };
        out.push(span(SpanData {
            trace_id: tid,
            span_id: step_span_id(j.job_id, s.number),
            parent: Some(jid),
            name: &s.name,
            start: a,
            end: b,
            attrs: vec![
                ("github.step_number", Attr::Int(s.number as i64)),
                ("github.conclusion", Attr::Str(&s.conclusion)),
            ],
            conclusion: &s.conclusion,
        }));
    }
    out
}

/// `ExportTraceServiceRequest` for one item; None when it has no usable times.
pub fn encode(item: &Item, service_name: &str) -> Option<Vec<u8>> {
    let spans = match item {
        Item::Run(r) => run_span(r).into_iter().collect(),
        Item::Job(j) => job_spans(j),
    };
    if spans.is_empty() {
        return None;
    }
    let mut resource = Pb::new();
    resource.message(1, key_value("service.name", Attr::Str(service_name)));
    let mut scope = Pb::new();
    scope.string(1, "devmetrics");
    scope.string(2, env!("CARGO_PKG_VERSION"));
    let mut scope_spans = Pb::new();
    scope_spans.message(1, scope);
    for s in spans {
        scope_spans.message(2, s);
    }
    let mut rs = Pb::new();
    rs.message(1, resource);
    rs.message(2, scope_spans);
    let mut req = Pb::new();
    req.message(1, rs);
    Some(req.0)
}

/// How the spans travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies: `POST {endpoint}/v1/traces`.
    HttpProtobuf,
    /// OTLP/gRPC over cleartext HTTP/2 (h2c): `TraceService/Export` on `{endpoint}`.
    Grpc,
}

/// What an exporter sends: spans or metrics, each to its own path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
}

type GrpcClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

enum Transport {
    Http(reqwest::Client),
    Grpc(Box<GrpcClient>),
}

pub struct Otlp {
    transport: Transport,
    url: String,
    headers: Vec<(String, String)>,
    service_name: String,
}

impl Otlp {
    pub fn new(
        endpoint: &str,
        protocol: Protocol,
        headers: Vec<(String, String)>,
        service_name: String,
    ) -> Otlp {
        Otlp::for_signal(endpoint, protocol, headers, service_name, Signal::Traces)
    }

    pub fn for_signal(
        endpoint: &str,
        protocol: Protocol,
        headers: Vec<(String, String)>,
        service_name: String,
        signal: Signal,
    ) -> Otlp {
        let base = endpoint.trim_end_matches('/');
        let (transport, url) = match protocol {
            Protocol::HttpProtobuf => (
                Transport::Http(
                    reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .expect("client builds"),
                ),
                if base.ends_with(signal.http_path()) {
                    base.to_string()
                } else {
                    format!("{base}{}", signal.http_path())
                },
            ),
            Protocol::Grpc => (
                Transport::Grpc(Box::new(
                    hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .http2_only(true)
                    .build_http(),
                )),
                format!("{base}{}", signal.grpc_path()),
            ),
        };
        Otlp {
            transport,
            url,
            headers,
            service_name,
        }
    }

    /// Sends one encoded export request over the configured transport.
    pub async fn post(&self, body: Vec<u8>) -> Result<(), Error> {
        match &self.transport {
            Transport::Http(c) => self.send_http(c, body).await,
            Transport::Grpc(c) => self.send_grpc(c, body).await,
        }
    }

    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    async fn send_http(&self, client: &reqwest::Client, body: Vec<u8>) -> Result<(), Error> {
        let mut req = client
            .post(&self.url)
            .header("content-type", "application/x-protobuf")
            .body(body);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(Error::Status(status))
        }
    }

    /// One unary gRPC call: a length-prefixed message out, `grpc-status` back in the
    /// trailers (or in the headers of a trailers-only answer).
    async fn send_grpc(&self, client: &GrpcClient, body: Vec<u8>) -> Result<(), Error> {
        use http_body_util::BodyExt;
        let mut framed = Vec::with_capacity(body.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        let mut req = http::Request::post(&self.url)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(framed)))
            .map_err(|e| Error::Transport(e.to_string()))?;
        let call = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(Error::Status(status));
            }
            let in_headers = resp.headers().get("grpc-status").cloned();
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
            let code = collected
                .trailers()
                .and_then(|t| t.get("grpc-status").cloned())
                .or(in_headers);
            match code.as_ref().and_then(|c| c.to_str().ok()) {
                Some("0") => Ok(()),
                Some(c) => Err(Error::Transport(format!("grpc-status {c}"))),
                None => Err(Error::Transport("no grpc-status".into())),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .map_err(|_| Error::Transport("timed out".into()))?
    }
}

#[async_trait::async_trait]
impl Sink for Otlp {
    fn name(&self) -> &'static str {
        "otlp"
    }

    async fn send(&self, item: &Item) -> Result<(), Error> {
        let Some(body) = encode(item, &self.service_name) else {
            return Ok(());
        };
        self.post(body).await
    }
}
