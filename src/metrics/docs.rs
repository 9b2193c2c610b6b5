//! Generates `docs/metrics.md` from the catalog.

use super::{FAMILIES, Kind, Origin};

pub fn markdown() -> String {
    let mut out = String::from(
        "# Metrics reference\n\n\
         Generated from `src/metrics/catalog.rs` by `devmetrics docs metrics > docs/metrics.md`; \
         a test fails when this file is stale. Families appear on `/metrics` once they have a \
         series. Families from a replaced tool keep its exact name, type and labels.\n\n\
         In OpenMetrics, counters are announced without `_total` (`# TYPE x counter`, samples \
         `x_total`), and the replaced tools' counters that lack the suffix are typed `unknown`.\n",
    );
    let sections = [
        (Origin::Devmetrics, "The exporter itself"),
        (Origin::GithubStatsExporter, "From github-stats-exporter"),
        (
            Origin::CopilotMetricsExporter,
            "From copilot-metrics-exporter",
        ),
        (Origin::GithubTelemetry, "From github-telemetry"),
        (Origin::DoraExporter, "From dora-exporter"),
        (
            Origin::SpaceliftExporter,
            "From the Spacelift prometheus-exporter",
        ),
    ];
    let mut sources: Vec<&str> = Vec::new();
    for f in FAMILIES {
        if !sources.contains(&f.source) {
            sources.push(f.source);
        }
    }
    for source in sources {
        out.push_str(&format!("\n## Source `{source}`\n"));
        for (origin, title) in sections {
            let fams: Vec<_> = FAMILIES
                .iter()
                .filter(|f| f.source == source && f.origin == origin)
                .collect();
            if fams.is_empty() {
                continue;
            }
            out.push_str(&format!("\n### {title}\n\n| name | type | unit | labels | help |\n| --- | --- | --- | --- | --- |\n"));
            for f in fams {
                let kind = match f.kind {
                    Kind::LegacyCounter => "counter (OpenMetrics: unknown)",
                    k => k.as_str(),
                };
                let labels = if f.labels.is_empty() {
                    "—".to_string()
                } else {
                    f.labels
                        .iter()
                        .map(|l| format!("`{l}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut help = f.help.replace('|', "\\|");
                if f.kind == Kind::Histogram {
                    let b: Vec<String> = f.buckets.iter().map(|b| b.to_string()).collect();
                    help.push_str(&format!(" Buckets: {}.", b.join(", ")));
                }
                out.push_str(&format!(
                    "| `{}` | {} | {} | {} | {} |\n",
                    f.name,
                    kind,
                    f.unit.unwrap_or("—"),
                    labels,
                    help
                ));
            }
        }
    }
    out
}
