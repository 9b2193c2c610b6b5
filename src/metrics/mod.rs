//! The metric catalog: every family the exporter can expose, declared once.
//!
//! Encoders, the store and `docs/metrics.md` all read from here, so a family's name, type,
//! unit and labels cannot drift between code and documentation.

mod catalog;
pub mod docs;
mod labels;
mod value;

pub use catalog::*;
pub use labels::{Interner, LabelError, Labels, hashed_label};
pub use value::{HistogramValue, Op, Sample, ScopeData, Snapshot, Update, Value, WrongKind};

/// Index of a family in [`FAMILIES`]; stable within one build, never persisted
/// (the store keys series by family name so catalog reordering is harmless).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FamilyId(pub u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// A monotonic counter; the family name ends in `_total`.
    Counter,
    Histogram,
    /// A counter whose documented name (from a replaced tool) lacks `_total`. Prometheus text
    /// types it `counter`; OpenMetrics requires the suffix for counters, so there it is typed
    /// `unknown` and keeps its name (design.md §4).
    LegacyCounter,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
            Kind::LegacyCounter => "counter",
        }
    }
}

/// Where a family comes from: the replaced tool whose contract it keeps, or ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Devmetrics,
    GithubStatsExporter,
    CopilotMetricsExporter,
    GithubTelemetry,
    DoraExporter,
    SpaceliftExporter,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Devmetrics => "devmetrics",
            Origin::GithubStatsExporter => "github-stats-exporter",
            Origin::CopilotMetricsExporter => "copilot-metrics-exporter",
            Origin::GithubTelemetry => "github-telemetry",
            Origin::DoraExporter => "dora-exporter",
            Origin::SpaceliftExporter => "spacelift prometheus-exporter",
        }
    }
}

#[derive(Debug)]
pub struct FamilyDef {
    pub name: &'static str,
    pub kind: Kind,
    /// OpenMetrics unit; when set, `name` ends with `_<unit>` (before `_total`).
    pub unit: Option<&'static str>,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    pub origin: Origin,
    /// The source (config section) that produces it; `core` for the exporter itself.
    pub source: &'static str,
    /// Upper bounds for histograms, ascending, without +Inf.
    pub buckets: &'static [f64],
}

impl FamilyDef {
    /// The name OpenMetrics uses in `# TYPE`/`# HELP`: counters drop `_total`.
    pub fn om_name(&self) -> &'static str {
        match self.kind {
            Kind::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            _ => self.name,
        }
    }
}

pub fn family(id: FamilyId) -> &'static FamilyDef {
    &FAMILIES[id.0 as usize]
}

/// Looks a family up by name. Linear, but only used when loading persisted rows and in tests;
/// code names families by their constants (`metrics::DEVMETRICS_BUILD_INFO`).
pub fn lookup(name: &str) -> Option<FamilyId> {
    FAMILIES
        .iter()
        .position(|f| f.name == name)
        .map(|i| FamilyId(i as u16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn catalog_follows_naming_rules() {
        let mut seen = HashSet::new();
        for f in FAMILIES {
            assert!(seen.insert(f.name), "{} declared twice", f.name);
            assert!(
                f.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{}",
                f.name
            );
            assert!(!f.help.is_empty(), "{} has no help", f.name);
            if f.kind == Kind::Counter {
                assert!(
                    f.name.ends_with("_total"),
                    "{} is a counter without _total",
                    f.name
                );
            }
            if let Some(unit) = f.unit {
                let base = f.om_name();
                assert!(
                    base.ends_with(&format!("_{unit}")),
                    "{} unit {unit}",
                    f.name
                );
            }
            if f.kind == Kind::Histogram {
                assert!(!f.buckets.is_empty(), "{}", f.name);
                assert!(f.buckets.windows(2).all(|w| w[0] < w[1]), "{}", f.name);
                assert!(!f.labels.contains(&"le"));
            }
            // The exporter's own telemetry is `devmetrics_*`; families a source adds beyond a
            // replaced tool are named for their upstream (e.g. `spacelift_stack_state`).
            if f.origin == Origin::Devmetrics && f.source == "core" {
                assert!(f.name.starts_with("devmetrics_"), "{}", f.name);
            }
            for l in f.labels {
                assert!(!l.starts_with("__"), "{} label {l}", f.name);
            }
        }
    }
}
