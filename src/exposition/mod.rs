//! Encodings of metric state: Prometheus text 0.0.4 and OpenMetrics 1.0 for `/metrics`.
//! This is the only module that knows an encoding.
//!
//! The encoder is written by hand rather than with `prometheus-client`: our series are already
//! held as pre-escaped label strings grouped by family (see `metrics::Labels`), so rendering is
//! a sequence of copies; a client library would need every series re-registered as a handle
//! and re-escaped on each scrape, which does not fit a million series in 300 MB
//! (docs/performance.md has the figures).

pub mod appinsights;
mod gzip;
mod negotiate;
pub mod otlp;
pub mod otlp_metrics;
pub mod push;
pub mod sink;

pub use gzip::{CacheTotals, CacheUse, Encoded, render_gzip};
pub use negotiate::{Format, negotiate};

use std::io::{self, Write};
use std::sync::Arc;

use crate::metrics::{FAMILIES, FamilyDef, FamilyId, Kind, ScopeData, Value};

/// Renders every family that has at least one series in `scopes`, in catalog order.
///
/// Scopes partition series: no two scopes hold the same (family, labels), which the sources
/// guarantee by putting their scope's identifying labels into every series they emit.
pub fn render<W: Write>(scopes: &[Arc<ScopeData>], format: Format, out: &mut W) -> io::Result<()> {
    let mut line = Vec::with_capacity(256);
    let mut parts = Vec::with_capacity(scopes.len());
    for (i, def) in FAMILIES.iter().enumerate() {
        let fid = FamilyId(i as u16);
        parts.clear();
        parts.extend(
            scopes
                .iter()
                .filter_map(|s| s.families.get(&fid))
                .filter(|m| !m.is_empty()),
        );
        if parts.is_empty() {
            continue;
        }
        write_header(def, format, out)?;
        for series in &parts {
            for (labels, value) in series.iter() {
                line.clear();
                write_series(def, labels.as_str(), value, &mut line);
                out.write_all(&line)?;
            }
        }
    }
    if format == Format::OpenMetrics {
        out.write_all(b"# EOF\n")?;
    }
    Ok(())
}

fn write_header<W: Write>(def: &FamilyDef, format: Format, out: &mut W) -> io::Result<()> {
    let mut help = String::with_capacity(def.help.len());
    for c in def.help.chars() {
        match c {
            '\\' => help.push_str("\\\\"),
            '\n' => help.push_str("\\n"),
            '"' if format == Format::OpenMetrics => help.push_str("\\\""),
            c => help.push(c),
        }
    }
    match format {
        Format::Text => {
            writeln!(out, "# HELP {} {}", def.name, help)?;
            writeln!(out, "# TYPE {} {}", def.name, def.kind.as_str())
        }
        Format::OpenMetrics => {
            let name = def.om_name();
            let ty = match def.kind {
                Kind::LegacyCounter => "unknown",
                k => k.as_str(),
            };
            writeln!(out, "# TYPE {name} {ty}")?;
            if let Some(unit) = def.unit {
                writeln!(out, "# UNIT {name} {unit}")?;
            }
            writeln!(out, "# HELP {name} {help}")
        }
    }
}

fn write_series(def: &FamilyDef, labels: &str, value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Number(v) => {
            out.extend_from_slice(def.name.as_bytes());
            if !labels.is_empty() {
                out.push(b'{');
                out.extend_from_slice(labels.as_bytes());
                out.push(b'}');
            }
            out.push(b' ');
            write_f64(*v, out);
            out.push(b'\n');
        }
        Value::Histogram(h) => {
            let mut cumulative = 0u64;
            for (i, count) in h.counts.iter().enumerate() {
                cumulative += count;
                out.extend_from_slice(def.name.as_bytes());
                out.extend_from_slice(b"_bucket{");
                if !labels.is_empty() {
                    out.extend_from_slice(labels.as_bytes());
                    out.push(b',');
                }
                out.extend_from_slice(b"le=\"");
                match def.buckets.get(i) {
                    Some(b) => write_le(*b, out),
                    None => out.extend_from_slice(b"+Inf"),
                }
                out.extend_from_slice(b"\"} ");
                out.extend_from_slice(itoa::Buffer::new().format(cumulative).as_bytes());
                out.push(b'\n');
            }
            for (suffix, v) in [("_sum", h.sum), ("_count", cumulative as f64)] {
                out.extend_from_slice(def.name.as_bytes());
                out.extend_from_slice(suffix.as_bytes());
                if !labels.is_empty() {
                    out.push(b'{');
                    out.extend_from_slice(labels.as_bytes());
                    out.push(b'}');
                }
                out.push(b' ');
                write_f64(v, out);
                out.push(b'\n');
            }
        }
    }
}

/// Integral values print without a fraction (`5`, as client_golang does); others in the
/// shortest form that round-trips.
pub fn write_f64(v: f64, out: &mut Vec<u8>) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
    } else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    }
}

/// Canonical `le` values per OpenMetrics: always a float (`1.0`, `0.25`), the same text in
/// both formats so a switch of format does not split series.
fn write_le(v: f64, out: &mut Vec<u8>) {
    out.extend_from_slice(ryu::Buffer::new().format(v).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::HistogramValue;
    use crate::metrics::{self, Labels};
    use std::collections::BTreeMap;

    fn scope() -> Arc<ScopeData> {
        let mut families = BTreeMap::new();
        let req = metrics::DEVMETRICS_HTTP_REQUESTS_TOTAL;
        let mut m = BTreeMap::new();
        m.insert(
            Labels::new(req, &["/x\"y", "200"]).unwrap(),
            Value::Number(3.0),
        );
        families.insert(req, m);
        let h = metrics::DEVMETRICS_HTTP_REQUEST_DURATION_SECONDS;
        let mut hv = HistogramValue::new(metrics::family(h).buckets);
        hv.observe(metrics::family(h).buckets, 0.003);
        hv.observe(metrics::family(h).buckets, 100.0);
        let mut m = BTreeMap::new();
        m.insert(
            Labels::new(h, &["/"]).unwrap(),
            Value::Histogram(Box::new(hv)),
        );
        families.insert(h, m);
        Arc::new(ScopeData {
            name: Arc::from("t"),
            updated_at: 0.0,
            version: 0,
            families,
            ..Default::default()
        })
    }

    fn render_str(format: Format) -> String {
        let mut out = Vec::new();
        render(&[scope()], format, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_format() {
        let s = render_str(Format::Text);
        assert!(s.contains("# TYPE devmetrics_http_requests_total counter\n"));
        assert!(s.contains("devmetrics_http_requests_total{route=\"/x\\\"y\",code=\"200\"} 3\n"));
        assert!(s.contains(
            "devmetrics_http_request_duration_seconds_bucket{route=\"/\",le=\"0.0025\"} 0\n"
        ));
        assert!(s.contains(
            "devmetrics_http_request_duration_seconds_bucket{route=\"/\",le=\"0.005\"} 1\n"
        ));
        assert!(s.contains(
            "devmetrics_http_request_duration_seconds_bucket{route=\"/\",le=\"1.0\"} 1\n"
        ));
        assert!(s.contains(
            "devmetrics_http_request_duration_seconds_bucket{route=\"/\",le=\"+Inf\"} 2\n"
        ));
        assert!(s.contains("devmetrics_http_request_duration_seconds_count{route=\"/\"} 2\n"));
        assert!(!s.contains("# EOF"));
    }

    #[test]
    fn openmetrics_format() {
        let s = render_str(Format::OpenMetrics);
        assert!(s.contains("# TYPE devmetrics_http_requests counter\n"));
        assert!(s.contains("# TYPE devmetrics_http_request_duration_seconds histogram\n# UNIT devmetrics_http_request_duration_seconds seconds\n"));
        assert!(s.ends_with("# EOF\n"));
    }

    #[test]
    fn numbers() {
        let f = |v| {
            let mut o = Vec::new();
            write_f64(v, &mut o);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(f(5.0), "5");
        assert_eq!(f(0.25), "0.25");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(1e20), "1e20");
    }
}
