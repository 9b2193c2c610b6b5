//! Receivers for the telemetry sinks, for tests and `demo`: an OTLP/HTTP traces endpoint that
//! decodes the protobuf wire format (with its own reader, independent of our encoder) and an
//! Application Insights track endpoint that parses the envelopes. Both keep what they decoded.

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{FakeServer, Faults};

/// One decoded OTLP span.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedSpan {
    pub service_name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub name: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Values rendered as text (ints and doubles via `to_string`).
    pub attributes: BTreeMap<String, String>,
    pub status_code: u64,
}

/// A protobuf field: (number, value).
#[derive(Debug)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

fn read_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let key = read_varint(b, &mut at)?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(read_varint(b, &mut at)?),
            1 => {
                let v = u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?);
                at += 8;
                Field::Fixed64(v)
            }
            2 => {
                let len = read_varint(b, &mut at)? as usize;
                let v = b.get(at..at + len)?;
                at += len;
                Field::Bytes(v)
            }
            5 => {
                let v = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?);
                at += 4;
                let _ = v;
                Field::Fixed32
            }
            _ => return None,
        };
        out.push((num, f));
    }
    Some(out)
}

fn msgs<'a>(fs: &[(u64, Field<'a>)], n: u64) -> Vec<&'a [u8]> {
    fs.iter()
        .filter_map(|(k, f)| match f {
            Field::Bytes(b) if *k == n => Some(*b),
            _ => None,
        })
        .collect()
}

fn text(fs: &[(u64, Field<'_>)], n: u64) -> String {
    msgs(fs, n)
        .first()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

fn key_value(b: &[u8]) -> Option<(String, String)> {
    let kv = fields(b)?;
    let any = fields(msgs(&kv, 2).first()?)?;
    let (num, f) = any.first()?;
    let v = match (num, f) {
        (1, Field::Bytes(s)) => String::from_utf8_lossy(s).into_owned(),
        (2, Field::Varint(v)) => (*v != 0).to_string(),
        (3, Field::Varint(v)) => (*v as i64).to_string(),
        (4, Field::Fixed64(v)) => f64::from_bits(*v).to_string(),
        _ => return None,
    };
    Some((text(&kv, 1), v))
}

/// Decodes an `ExportTraceServiceRequest` into its spans; None if it is not valid protobuf
/// of that shape.
pub fn decode_traces(body: &[u8]) -> Option<Vec<DecodedSpan>> {
    let mut out = Vec::new();
    for rs in msgs(&fields(body)?, 1) {
        let rs = fields(rs)?;
        let mut service_name = String::new();
        if let Some(res) = msgs(&rs, 1).first() {
            for kv in msgs(&fields(res)?, 1) {
                let (k, v) = key_value(kv)?;
                if k == "service.name" {
                    service_name = v;
                }
            }
        }
        for ss in msgs(&rs, 2) {
            for span in msgs(&fields(ss)?, 2) {
                let f = fields(span)?;
                let fixed = |n: u64| {
                    f.iter().find_map(|(k, v)| match v {
                        Field::Fixed64(x) if *k == n => Some(*x),
                        _ => None,
                    })
                };
                let mut attributes = BTreeMap::new();
                for kv in msgs(&f, 9) {
                    let (k, v) = key_value(kv)?;
                    attributes.insert(k, v);
                }
                let status_code = match msgs(&f, 15).first() {
                    Some(st) => fields(st)?
                        .iter()
                        .find_map(|(k, v)| match v {
                            Field::Varint(x) if *k == 3 => Some(*x),
                            _ => None,
                        })
                        .unwrap_or(0),
                    None => 0,
                };
                out.push(DecodedSpan {
                    service_name: service_name.clone(),
                    trace_id: msgs(&f, 1).first().map(|b| b.to_vec()).unwrap_or_default(),
                    span_id: msgs(&f, 2).first().map(|b| b.to_vec()).unwrap_or_default(),
                    parent_span_id: msgs(&f, 4).first().map(|b| b.to_vec()).unwrap_or_default(),
                    name: text(&f, 5),
                    start_unix_nano: fixed(7)?,
                    end_unix_nano: fixed(8)?,
                    attributes,
                    status_code,
                });
            }
        }
    }
    Some(out)
}

/// One decoded OTLP metric data point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecodedPoint {
    pub service_name: String,
    pub name: String,
    pub unit: String,
    /// `gauge`, `sum` or `histogram`.
    pub kind: &'static str,
    pub monotonic: bool,
    /// 2 for cumulative.
    pub temporality: u64,
    pub attributes: BTreeMap<String, String>,
    pub start_unix_nano: u64,
    pub time_unix_nano: u64,
    /// Gauges and sums.
    pub value: f64,
    /// Histograms.
    pub count: u64,
    pub sum: f64,
    pub bucket_counts: Vec<u64>,
    pub explicit_bounds: Vec<f64>,
}

fn fixed(f: &[(u64, Field<'_>)], n: u64) -> Option<u64> {
    f.iter().find_map(|(k, v)| match v {
        Field::Fixed64(x) if *k == n => Some(*x),
        _ => None,
    })
}

fn varint(f: &[(u64, Field<'_>)], n: u64) -> u64 {
    f.iter()
        .find_map(|(k, v)| match v {
            Field::Varint(x) if *k == n => Some(*x),
            _ => None,
        })
        .unwrap_or(0)
}

/// A packed repeated fixed64 or double (little-endian 8-byte values).
fn packed(f: &[(u64, Field<'_>)], n: u64) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    for b in msgs(f, n) {
        if b.len() % 8 != 0 {
            return None;
        }
        out.extend(
            b.chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
        );
    }
    Some(out)
}

/// Decodes an `ExportMetricsServiceRequest` into its data points; None if it is not valid
/// protobuf of that shape.
pub fn decode_metrics(body: &[u8]) -> Option<Vec<DecodedPoint>> {
    let mut out = Vec::new();
    for rm in msgs(&fields(body)?, 1) {
        let rm = fields(rm)?;
        let mut service_name = String::new();
        if let Some(res) = msgs(&rm, 1).first() {
            for kv in msgs(&fields(res)?, 1) {
                let (k, v) = key_value(kv)?;
                if k == "service.name" {
                    service_name = v;
                }
            }
        }
        for sm in msgs(&rm, 2) {
            for metric in msgs(&fields(sm)?, 2) {
                let m = fields(metric)?;
                let (kind, data, point_attrs) = if let Some(d) = msgs(&m, 5).first() {
                    ("gauge", *d, 7)
                } else if let Some(d) = msgs(&m, 7).first() {
                    ("sum", *d, 7)
                } else if let Some(d) = msgs(&m, 9).first() {
                    ("histogram", *d, 9)
                } else {
                    return None;
                };
                let d = fields(data)?;
                for dp in msgs(&d, 1) {
                    let p = fields(dp)?;
                    let mut attributes = BTreeMap::new();
                    for kv in msgs(&p, point_attrs) {
                        let (k, v) = key_value(kv)?;
                        attributes.insert(k, v);
                    }
                    let mut point = DecodedPoint {
                        service_name: service_name.clone(),
                        name: text(&m, 1),
                        unit: text(&m, 3),
                        kind,
                        monotonic: varint(&d, 3) == 1,
                        temporality: varint(&d, 2),
                        attributes,
                        start_unix_nano: fixed(&p, 2).unwrap_or(0),
                        time_unix_nano: fixed(&p, 3)?,
                        ..Default::default()
                    };
                    if kind == "histogram" {
                        point.count = fixed(&p, 4)?;
                        point.sum = f64::from_bits(fixed(&p, 5).unwrap_or(0));
                        point.bucket_counts = packed(&p, 6)?;
                        point.explicit_bounds =
                            packed(&p, 7)?.into_iter().map(f64::from_bits).collect();
                    } else {
                        point.value = f64::from_bits(fixed(&p, 4)?);
                    }
                    out.push(point);
                }
            }
        }
    }
    Some(out)
}

/// What a receiver has accepted (after the fault layer let the request through).
#[derive(Default)]
pub struct Received {
    pub spans: Mutex<Vec<DecodedSpan>>,
    /// Each metrics export's points, one entry per request.
    pub exports: Mutex<Vec<Vec<DecodedPoint>>>,
    pub events: Mutex<Vec<serde_json::Value>>,
    pub undecodable: Mutex<u64>,
}

/// A fake collector at `path`: `handle` decodes each request body into `Received` and
/// answers as the real service does.
async fn receiver<F, Fut, R>(
    name: &'static str,
    path: &str,
    seed: u64,
    handle: F,
) -> std::io::Result<(FakeServer, Arc<Received>)>
where
    F: Fn(Arc<Received>, Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send + 'static,
    R: axum::response::IntoResponse + 'static,
{
    let got = Arc::new(Received::default());
    let g = got.clone();
    let router = Router::new().route(path, post(move |body: Bytes| handle(g.clone(), body)));
    Ok((
        FakeServer::start(name, router, Faults::new(seed)).await?,
        got,
    ))
}

/// An OTLP/HTTP collector at `/v1/traces`.
pub async fn otlp_receiver(seed: u64) -> std::io::Result<(FakeServer, Arc<Received>)> {
    receiver("otlp", "/v1/traces", seed, |g, body| async move {
        match decode_traces(&body) {
            Some(spans) => {
                g.spans.lock().extend(spans);
                (StatusCode::OK, Bytes::new())
            }
            None => {
                *g.undecodable.lock() += 1;
                (StatusCode::BAD_REQUEST, Bytes::new())
            }
        }
    })
    .await
}

/// An OTLP/HTTP collector at `/v1/metrics`.
pub async fn otlp_metrics_receiver(seed: u64) -> std::io::Result<(FakeServer, Arc<Received>)> {
    receiver("otlp-metrics", "/v1/metrics", seed, |g, body| async move {
        match decode_metrics(&body) {
            Some(points) => {
                g.exports.lock().push(points);
                (StatusCode::OK, Bytes::new())
            }
            None => {
                *g.undecodable.lock() += 1;
                (StatusCode::BAD_REQUEST, Bytes::new())
            }
        }
    })
    .await
}

/// An Application Insights ingestion endpoint at `/v2/track`.
pub async fn appinsights_receiver(seed: u64) -> std::io::Result<(FakeServer, Arc<Received>)> {
    receiver("appinsights", "/v2/track", seed, |g, body| async move {
        match serde_json::from_slice::<Vec<serde_json::Value>>(&body) {
            Ok(items) => {
                let n = items.len();
                g.events.lock().extend(items);
                let answer =
                    format!("{{\"itemsReceived\":{n},\"itemsAccepted\":{n},\"errors\":[]}}");
                (StatusCode::OK, answer)
            }
            Err(_) => {
                *g.undecodable.lock() += 1;
                (StatusCode::BAD_REQUEST, String::new())
            }
        }
    })
    .await
}

/// An OTLP/gRPC collector (`TraceService/Export` over h2c): strips the gRPC frame, decodes
/// the request and answers `grpc-status: 0` in the trailers, as a real collector does.
pub async fn otlp_grpc_receiver(seed: u64) -> std::io::Result<(FakeServer, Arc<Received>)> {
    grpc_receiver(
        "otlp-grpc",
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        seed,
        |g, msg| {
            decode_traces(msg)
                .map(|s| g.spans.lock().extend(s))
                .is_some()
        },
    )
    .await
}

/// An OTLP/gRPC metrics collector (`MetricsService/Export` over h2c).
pub async fn otlp_metrics_grpc_receiver(seed: u64) -> std::io::Result<(FakeServer, Arc<Received>)> {
    grpc_receiver(
        "otlp-metrics-grpc",
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        seed,
        |g, msg| {
            decode_metrics(msg)
                .map(|p| g.exports.lock().push(p))
                .is_some()
        },
    )
    .await
}

/// A unary gRPC service at `path`: `keep` decodes and keeps the unframed request message,
/// answering whether it could.
async fn grpc_receiver(
    name: &'static str,
    path: &str,
    seed: u64,
    keep: fn(&Received, &[u8]) -> bool,
) -> std::io::Result<(FakeServer, Arc<Received>)> {
    use axum::body::Body;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    receiver(name, path, seed, move |g, body| async move {
        let message = (body.len() >= 5 && body[0] == 0)
            .then(|| {
                let len = u32::from_be_bytes(body[1..5].try_into().ok()?) as usize;
                body.get(5..5 + len)
            })
            .flatten();
        let code = match message {
            Some(m) if keep(&g, m) => "0",
            _ => {
                *g.undecodable.lock() += 1;
                "3" // INVALID_ARGUMENT
            }
        };
        let mut trailers = axum::http::HeaderMap::new();
        trailers.insert("grpc-status", code.parse().expect("ASCII"));
        // An empty export response, framed.
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
            Ok(Frame::trailers(trailers)),
        ];
        axum::response::Response::builder()
            .header("content-type", "application/grpc")
            .body(Body::new(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .expect("valid response")
    })
    .await
}
