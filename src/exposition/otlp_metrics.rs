//! Every family as OTLP metrics (`ExportMetricsServiceRequest`), for backends that do not
//! scrape: gauges as gauges, counters as cumulative monotonic sums, histograms as cumulative
//! explicit-bucket histograms. Names follow the Prometheus→OTLP mapping: a counter loses its
//! `_total`; the unit goes to the unit field (UCUM) and the name keeps its suffix, so a
//! collector exporting to Prometheus again gives back the same names. Labels become
//! attributes; empty labels (absent in Prometheus) are left out. Encoded by hand with the
//! traces' protobuf writer, for the same reason.

use std::sync::Arc;

use super::otlp::{Attr, Pb, key_value};
use crate::metrics::{FAMILIES, FamilyId, Kind, ScopeData, Value};

const CUMULATIVE: u64 = 2;

/// The OTLP name of a family.
pub fn otlp_name(name: &str, kind: Kind) -> &str {
    match kind {
        Kind::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    }
}

/// UCUM for the catalog's units.
fn ucum(unit: Option<&str>) -> &'static str {
    match unit {
        Some("seconds") => "s",
        Some("bytes") => "By",
        Some("ratio") => "1",
        _ => "",
    }
}

fn attributes(p: &mut Pb, field: u32, labels: &crate::metrics::Labels) {
    for (k, v) in labels.pairs() {
        if !v.is_empty() {
            p.message(field, key_value(&k, Attr::Str(&v)));
        }
    }
}

fn nanos(t: f64) -> u64 {
    (t.max(0.0) * 1e9) as u64
}

/// One request holding every series of `scopes`, stamped `now`, cumulative from `start`.
pub fn encode(scopes: &[Arc<ScopeData>], service_name: &str, start: f64, now: f64) -> Vec<u8> {
    let (start, now) = (nanos(start), nanos(now));
    let mut scope_metrics = Pb::new();
    let mut scope = Pb::new();
    scope.string(1, "devmetrics");
    scope.string(2, env!("CARGO_PKG_VERSION"));
    scope_metrics.message(1, scope);
    for (i, def) in FAMILIES.iter().enumerate() {
        let fid = FamilyId(i as u16);
        let series: Vec<_> = scopes
            .iter()
            .filter_map(|s| s.families.get(&fid))
            .flat_map(|m| m.iter())
            .collect();
        if series.is_empty() {
            continue;
        }
        let mut points = Pb::new();
        let counter = matches!(def.kind, Kind::Counter | Kind::LegacyCounter);
        for (labels, value) in series {
            match value {
                Value::Number(v) => {
                    let mut dp = Pb::new();
                    if counter {
                        dp.fixed64(2, start);
                    }
                    dp.fixed64(3, now);
                    dp.tag(4, 1);
                    dp.0.extend_from_slice(&v.to_le_bytes());
                    attributes(&mut dp, 7, labels);
                    points.message(1, dp);
                }
                Value::Histogram(h) => {
                    let mut dp = Pb::new();
                    dp.fixed64(2, start);
                    dp.fixed64(3, now);
                    dp.fixed64(4, h.counts.iter().sum::<u64>());
                    dp.tag(5, 1);
                    dp.0.extend_from_slice(&h.sum.to_le_bytes());
                    let mut counts = Vec::with_capacity(h.counts.len() * 8);
                    for c in h.counts.iter() {
                        counts.extend_from_slice(&c.to_le_bytes());
                    }
                    dp.bytes(6, &counts);
                    let mut bounds = Vec::with_capacity(def.buckets.len() * 8);
                    for b in def.buckets {
                        bounds.extend_from_slice(&b.to_le_bytes());
                    }
                    dp.bytes(7, &bounds);
                    attributes(&mut dp, 9, labels);
                    points.message(1, dp);
                }
            }
        }
        let mut metric = Pb::new();
        metric.string(1, otlp_name(def.name, def.kind));
        metric.string(2, def.help);
        metric.string(3, ucum(def.unit));
        match def.kind {
            Kind::Gauge => metric.message(5, points),
            Kind::Counter | Kind::LegacyCounter => {
                points.uint(2, CUMULATIVE);
                points.uint(3, 1);
                metric.message(7, points);
            }
            Kind::Histogram => {
                points.uint(2, CUMULATIVE);
                metric.message(9, points);
            }
        }
        scope_metrics.message(2, metric);
    }
    let mut resource = Pb::new();
    resource.message(1, key_value("service.name", Attr::Str(service_name)));
    resource.message(
        1,
        key_value("service.version", Attr::Str(env!("CARGO_PKG_VERSION"))),
    );
    let mut rm = Pb::new();
    rm.message(1, resource);
    rm.message(2, scope_metrics);
    let mut req = Pb::new();
    req.message(1, rm);
    req.0
}
