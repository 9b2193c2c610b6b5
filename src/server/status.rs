//! The status pages: server-rendered HTML with inline CSS and SVG, no scripts and no outside
//! assets, readable from a phone to a wide screen. Every figure comes from the same scopes
//! `/metrics` renders, and carries what it was computed from: `data-series` (one series, as
//! `/metrics` names it), `data-sum` (a sum of series) or `data-ratio` (one sum over another),
//! with `data-value` the number shown, so a test can recompute each page from `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;

use super::Shared;
use crate::metrics::{self, FamilyId, Labels, ScopeData, Value};

/// Every scope `/metrics` renders, at one moment.
struct View {
    scopes: Vec<Arc<ScopeData>>,
}

/// A series of a number family: its labels, its `/metrics` name and its value.
struct Num {
    labels: Labels,
    key: String,
    value: f64,
}

/// A histogram series: its sum and count, with their `/metrics` names.
struct Hist {
    labels: Labels,
    sum: (String, f64),
    count: (String, f64),
}

fn key(name: &str, suffix: &str, labels: &Labels) -> String {
    if labels.is_empty() {
        format!("{name}{suffix}")
    } else {
        format!("{name}{suffix}{{{}}}", labels.as_str())
    }
}

impl View {
    async fn load(s: &Shared) -> View {
        let mut scopes = s.store.snapshot().scopes;
        scopes.push(Arc::new(s.telemetry.scope().await));
        View { scopes }
    }

    fn numbers(&self, fid: FamilyId) -> Vec<Num> {
        let name = metrics::family(fid).name;
        self.scopes
            .iter()
            .filter_map(|s| s.families.get(&fid))
            .flat_map(|m| m.iter())
            .filter_map(|(l, v)| {
                v.as_f64().map(|value| Num {
                    labels: l.clone(),
                    key: key(name, "", l),
                    value,
                })
            })
            .collect()
    }

    /// The series of `fid` by the value of their label `name` (one series per value).
    fn by_label(&self, fid: FamilyId, name: &str) -> BTreeMap<String, Num> {
        self.numbers(fid)
            .into_iter()
            .map(|n| (label(&n.labels, name), n))
            .collect()
    }

    fn histograms(&self, fid: FamilyId) -> Vec<Hist> {
        let name = metrics::family(fid).name;
        self.scopes
            .iter()
            .filter_map(|s| s.families.get(&fid))
            .flat_map(|m| m.iter())
            .filter_map(|(l, v)| match v {
                Value::Histogram(h) => Some(Hist {
                    labels: l.clone(),
                    sum: (key(name, "_sum", l), h.sum),
                    count: (key(name, "_count", l), h.counts.iter().sum::<u64>() as f64),
                }),
                Value::Number(_) => None,
            })
            .collect()
    }
}

fn label(l: &Labels, name: &str) -> String {
    l.get(name).unwrap_or_default()
}

/// One figure shown, and how it was computed.
struct Fig {
    value: f64,
    how: How,
}

enum How {
    Series(String),
    Sum(Vec<String>),
    Ratio(Vec<String>, Vec<String>),
}

impl Fig {
    fn one(n: &Num) -> Fig {
        Fig {
            value: n.value,
            how: How::Series(n.key.clone()),
        }
    }

    fn sum<'a>(parts: impl IntoIterator<Item = (&'a String, f64)>) -> Fig {
        let (keys, value) = parts
            .into_iter()
            .fold((Vec::new(), 0.0), |(mut k, v), (key, x)| {
                k.push(key.clone());
                (k, v + x)
            });
        Fig {
            value,
            how: How::Sum(keys),
        }
    }

    /// `num / den`; `None` when the denominator is 0.
    fn ratio(num: Fig, den: Fig) -> Option<Fig> {
        let (How::Sum(a), How::Sum(b)) = (num.how, den.how) else {
            return None;
        };
        (den.value != 0.0).then(|| Fig {
            value: num.value / den.value,
            how: How::Ratio(a, b),
        })
    }

    fn attrs(&self) -> String {
        let mut v = Vec::new();
        crate::exposition::write_f64(self.value, &mut v);
        let value = String::from_utf8_lossy(&v);
        let how = match &self.how {
            How::Series(k) => format!("data-series=\"{}\"", esc(k)),
            How::Sum(ks) => format!("data-sum=\"{}\"", esc(&json(ks))),
            How::Ratio(a, b) => format!("data-ratio=\"{}\"", esc(&json(&[a, b]))),
        };
        format!("data-value=\"{value}\" {how}")
    }

    fn td(&self, text: &str) -> String {
        format!("<td class=\"n\" {}>{}</td>", self.attrs(), esc(text))
    }
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn count(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn duration(secs: f64) -> String {
    let s = secs.abs();
    if s < 60.0 {
        format!("{secs:.1} s")
    } else if s < 3600.0 {
        format!("{:.1} min", secs / 60.0)
    } else if s < 86_400.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} d", secs / 86_400.0)
    }
}

fn percent(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

fn ago(ts: f64) -> String {
    if ts <= 0.0 {
        return "never".into();
    }
    let d = crate::clock::now_unix() - ts;
    if d >= 0.0 {
        format!("{} ago", duration(d))
    } else {
        format!("in {}", duration(-d))
    }
}

const PAGES: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/status/queue", "Queue"),
    ("/status/ci", "CI"),
    ("/status/dora", "DORA"),
    ("/status/copilot", "Copilot"),
];

const CSS: &str = "
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#fff;--mute:#59636e;--line:#d1d9e0;--ok:#1a7f37;--bad:#cf222e;--bar:#0969da}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--mute:#9198a1;--line:#3d444d;--ok:#3fb950;--bad:#f85149;--bar:#4493f8}}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:baseline;padding:.75rem 1rem;border-bottom:1px solid var(--line)}
header b{font-size:1.1rem}nav{display:flex;flex-wrap:wrap;gap:.25rem .9rem}nav a{color:var(--bar);text-decoration:none}nav a[aria-current]{font-weight:600;text-decoration:underline}
main{padding:0 1rem 2rem;max-width:78rem}h2{font-size:1.05rem;margin:1.5rem 0 .5rem}p.note{color:var(--mute);margin:.25rem 0}
.scroll{overflow-x:auto}table{border-collapse:collapse;min-width:100%}th,td{padding:.3rem .6rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top;white-space:nowrap}
th{font-weight:600;color:var(--mute)}td.n{text-align:right;font-variant-numeric:tabular-nums}.ok{color:var(--ok)}.bad{color:var(--bad)}
code{font-size:.85em}svg{max-width:100%;height:auto}svg text{fill:var(--fg);font:12px system-ui,sans-serif}svg rect{fill:var(--bar)}
";

fn layout(title: &str, path: &str, body: &str) -> Html<String> {
    let mut nav = String::new();
    for (href, name) in PAGES {
        let current = if *href == path {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{name}</a>");
    }
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title} · devmetrics</title><style>{CSS}</style></head><body>\
         <header><b>devmetrics</b><nav>{nav}<a href=\"/metrics\">/metrics</a><a href=\"/healthz\">/healthz</a></nav></header>\
         <main><h1 style=\"font-size:1.3rem\">{title}</h1>{body}</main></body></html>\n",
        title = esc(title),
    ))
}

/// A table: headers, then rows of already rendered cells.
fn table(headers: &[&str], rows: &[String], empty: &str) -> String {
    let mut s = String::from("<div class=\"scroll\"><table><thead><tr>");
    for h in headers {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            s,
            "<tr><td colspan=\"{}\">{}</td></tr>",
            headers.len(),
            esc(empty)
        );
    }
    for r in rows {
        let _ = write!(s, "<tr>{r}</tr>");
    }
    s.push_str("</tbody></table></div>");
    s
}

fn text(s: &str) -> String {
    format!("<td>{}</td>", esc(s))
}

/// A horizontal bar chart drawn on the server: one bar per (name, value, shown).
fn bars(title: &str, items: &[(String, f64, String)]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let max = items
        .iter()
        .map(|i| i.1)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let (row, label_w, bar_w) = (22.0, 260.0, 380.0);
    let height = row * items.len() as f64 + 8.0;
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {} {height}\" width=\"{}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        esc(title),
        label_w + bar_w + 90.0,
        label_w + bar_w + 90.0,
        esc(title)
    );
    for (i, (name, v, shown)) in items.iter().enumerate() {
        let y = 4.0 + i as f64 * row;
        let w = (v / max * bar_w).max(1.0);
        let short: String = if name.chars().count() > 38 {
            name.chars().take(37).chain(['…']).collect()
        } else {
            name.clone()
        };
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect x=\"{label_w}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" rx=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>",
            label_w - 6.0,
            y + 15.0,
            esc(&short),
            y + 3.0,
            row - 6.0,
            label_w + w + 6.0,
            y + 15.0,
            esc(shown)
        );
    }
    s.push_str("</svg>");
    s
}

/// Series grouped by the values of `by`, in label order.
fn group<'a, T>(
    items: &'a [T],
    labels: impl Fn(&T) -> &Labels,
    by: &[&str],
) -> BTreeMap<Vec<String>, Vec<&'a T>> {
    let mut out: BTreeMap<Vec<String>, Vec<&T>> = BTreeMap::new();
    for i in items {
        let l = labels(i);
        out.entry(by.iter().map(|b| label(l, b)).collect())
            .or_default()
            .push(i);
    }
    out
}

fn nums_sum(ns: &[&Num]) -> Fig {
    Fig::sum(ns.iter().map(|n| (&n.key, n.value)))
}

/// Mean of histograms: Σsum / Σcount.
fn mean(hs: &[&Hist]) -> Option<Fig> {
    Fig::ratio(
        Fig::sum(hs.iter().map(|h| (&h.sum.0, h.sum.1))),
        Fig::sum(hs.iter().map(|h| (&h.count.0, h.count.1))),
    )
}

fn observations(hs: &[&Hist]) -> Fig {
    Fig::sum(hs.iter().map(|h| (&h.count.0, h.count.1)))
}

pub async fn overview(State(s): State<Shared>) -> Html<String> {
    let v = View::load(&s).await;
    let mut body = String::new();
    let health = s.telemetry.sources();
    let _ = write!(
        body,
        "<p class=\"note\">Version {} · this replica is {} · store {}.</p>",
        env!("CARGO_PKG_VERSION"),
        if s.leadership.is_leader() {
            "the leader (it runs the pollers)"
        } else {
            "a follower"
        },
        match v.numbers(metrics::DEVMETRICS_STORE_UP).first() {
            Some(n) if n.value == 1.0 => "<span class=\"ok\">persisting</span>",
            Some(_) => "<span class=\"bad\">failing its writes</span>",
            None => "unknown",
        }
    );
    let by_source = |fid| v.by_label(fid, "source");
    let up = by_source(metrics::DEVMETRICS_SOURCE_UP);
    let last = by_source(metrics::DEVMETRICS_SOURCE_LAST_SUCCESS_TIMESTAMP_SECONDS);
    let took = by_source(metrics::DEVMETRICS_SOURCE_SCRAPE_DURATION_SECONDS);
    let next = by_source(metrics::DEVMETRICS_SOURCE_NEXT_POLL_TIMESTAMP_SECONDS);
    let mut rows = Vec::new();
    for (source, n) in &up {
        let mut r = text(source);
        let (class, word) = if n.value == 1.0 {
            ("ok", "up")
        } else {
            ("bad", "down")
        };
        let _ = write!(
            r,
            "<td class=\"n {class}\" {}>{word}</td>",
            Fig::one(n).attrs()
        );
        r.push_str(&match last.get(source) {
            Some(t) => Fig::one(t).td(&ago(t.value)),
            None => text("never"),
        });
        r.push_str(&match took.get(source) {
            Some(t) => Fig::one(t).td(&duration(t.value)),
            None => text(""),
        });
        r.push_str(&match next.get(source) {
            Some(t) => Fig::one(t).td(&ago(t.value)),
            None => text(""),
        });
        r.push_str(&text(
            health
                .get(source)
                .and_then(|h| h.last_error.as_deref())
                .unwrap_or(""),
        ));
        rows.push(r);
    }
    body.push_str("<h2>Sources</h2>");
    body.push_str(&table(
        &[
            "source",
            "health",
            "last success",
            "last poll took",
            "last error",
        ],
        &rows,
        "no sources configured",
    ));

    // GitHub's budget per org: what each poll may spend, and how far a cold start has come.
    let by_org = |fid| v.by_label(fid, "org");
    let interval = by_org(metrics::DEVMETRICS_GITHUB_EFFECTIVE_INTERVAL_SECONDS);
    let remaining = by_org(metrics::DEVMETRICS_GITHUB_RATE_LIMIT_REMAINING);
    let reset = by_org(metrics::DEVMETRICS_GITHUB_RATE_LIMIT_RESET_TIMESTAMP_SECONDS);
    let progress = by_org(metrics::DEVMETRICS_GITHUB_SCRAPE_PROGRESS_RATIO);
    let eta = by_org(metrics::DEVMETRICS_GITHUB_SCRAPE_ETA_SECONDS);
    let over = by_org(metrics::DEVMETRICS_GITHUB_BUDGET_OVERCOMMITTED);
    let mut orgs: Vec<&String> = interval.keys().chain(remaining.keys()).collect();
    orgs.sort();
    orgs.dedup();
    let mut rows = Vec::new();
    for org in orgs {
        let mut r = text(org);
        let cell = |m: &BTreeMap<String, Num>, f: &dyn Fn(f64) -> String| match m.get(org) {
            Some(n) => Fig::one(n).td(&f(n.value)),
            None => text(""),
        };
        r.push_str(&cell(&remaining, &count));
        r.push_str(&cell(&reset, &ago));
        r.push_str(&cell(&interval, &duration));
        r.push_str(&cell(&over, &|x| {
            if x == 1.0 { "yes".into() } else { "no".into() }
        }));
        r.push_str(&cell(&progress, &percent));
        r.push_str(&cell(&eta, &duration));
        rows.push(r);
    }
    if !rows.is_empty() {
        body.push_str("<h2>GitHub budget</h2><p class=\"note\">Requests left of each installation's hour, the interval each org's polls run at (stretched when the budget is overcommitted), and a cycle's progress: a cold start of a large org spreads over several cycles.</p>");
        body.push_str(&table(
            &[
                "org",
                "requests left",
                "budget resets",
                "effective interval",
                "overcommitted",
                "cycle progress",
                "cycle ETA",
            ],
            &rows,
            "",
        ));
    }
    layout("Overview", "/", &body)
}

pub async fn queue(State(s): State<Shared>) -> Html<String> {
    let v = View::load(&s).await;
    let by_topic = |fid| v.by_label(fid, "topic");
    let cols = [
        (metrics::DEVMETRICS_QUEUE_DEPTH, false),
        (metrics::DEVMETRICS_QUEUE_OLDEST_MESSAGE_AGE_SECONDS, true),
        (metrics::DEVMETRICS_QUEUE_DEAD_LETTERS, false),
        (metrics::DEVMETRICS_QUEUE_PUBLISHED_TOTAL, false),
        (metrics::DEVMETRICS_QUEUE_ACKED_TOTAL, false),
        (metrics::DEVMETRICS_QUEUE_RETRIED_TOTAL, false),
        (metrics::DEVMETRICS_QUEUE_DEAD_LETTERED_TOTAL, false),
    ];
    let maps: Vec<(BTreeMap<String, Num>, bool)> =
        cols.iter().map(|(f, d)| (by_topic(*f), *d)).collect();
    let mut topics: Vec<&String> = maps.iter().flat_map(|(m, _)| m.keys()).collect();
    topics.sort();
    topics.dedup();
    let mut rows = Vec::new();
    let mut dead = Vec::new();
    for t in topics {
        let mut r = text(t);
        for (m, is_age) in &maps {
            r.push_str(&match m.get(t) {
                Some(n) => Fig::one(n).td(&if *is_age {
                    duration(n.value)
                } else {
                    count(n.value)
                }),
                None => text(""),
            });
        }
        if maps[2].0.get(t).is_some_and(|n| n.value > 0.0) {
            dead.push(format!(
                "<li><code>devmetrics queue dead-letters --topic {0}</code> then <code>devmetrics queue replay --topic {0}</code></li>",
                esc(t)
            ));
        }
        rows.push(r);
    }
    let mut body = String::from(
        "<p class=\"note\">Waiting messages per topic. A message that failed its last attempt is a dead letter: inspect it, fix the cause, then replay it (handlers apply each event once, so replaying is safe).</p>",
    );
    body.push_str(&table(
        &[
            "topic",
            "depth",
            "oldest",
            "dead letters",
            "published",
            "acked",
            "retried",
            "dead-lettered",
        ],
        &rows,
        "no queue activity yet",
    ));
    if !dead.is_empty() {
        let _ = write!(
            body,
            "<h2>Replay dead letters</h2><ul>{}</ul>",
            dead.join("")
        );
    }
    layout("Queue", "/status/queue", &body)
}

const FAILED: &[&str] = &["failure", "timed_out", "startup_failure"];

/// The slowest groups of a duration histogram: (name, mean, observations), top `n` by mean.
fn slowest(hs: &[Hist], by: &[&str], n: usize) -> Vec<(String, Fig, Fig)> {
    let mut out: Vec<(String, Fig, Fig)> = group(hs, |h| &h.labels, by)
        .into_iter()
        .filter_map(|(k, g)| Some((k.join(" / "), mean(&g)?, observations(&g))))
        .collect();
    out.sort_by(|a, b| b.1.value.total_cmp(&a.1.value));
    out.truncate(n);
    out
}

/// The groups of a conclusion counter with the largest failed share: (name, share, total).
fn flakiest(ns: &[Num], by: &[&str], n: usize) -> Vec<(String, Fig, Fig)> {
    let mut out: Vec<(String, Fig, Fig)> = group(ns, |x| &x.labels, by)
        .into_iter()
        .filter_map(|(k, g)| {
            let failed: Vec<&Num> = g
                .iter()
                .copied()
                .filter(|x| FAILED.contains(&label(&x.labels, "conclusion").as_str()))
                .collect();
            let share = Fig::ratio(nums_sum(&failed), nums_sum(&g))?;
            (share.value > 0.0).then(|| (k.join(" / "), share, nums_sum(&g)))
        })
        .collect();
    out.sort_by(|a, b| b.1.value.total_cmp(&a.1.value));
    out.truncate(n);
    out
}

fn ranked(rows: &[(String, Fig, Fig)], shown: fn(f64) -> String) -> Vec<String> {
    rows.iter()
        .map(|(name, a, b)| {
            format!(
                "{}{}{}",
                text(name),
                a.td(&shown(a.value)),
                b.td(&count(b.value))
            )
        })
        .collect()
}

fn chart(title: &str, rows: &[(String, Fig, Fig)], shown: fn(f64) -> String) -> String {
    let items: Vec<(String, f64, String)> = rows
        .iter()
        .map(|(n, f, _)| (n.clone(), f.value, shown(f.value)))
        .collect();
    bars(title, &items)
}

pub async fn ci(State(s): State<Shared>) -> Html<String> {
    let v = View::load(&s).await;
    let mut body = String::from(
        "<p class=\"note\">From the workflow_run and workflow_job webhooks since the counters began. Means are sums over counts; failure shares count failure, timed_out and startup_failure.</p>",
    );
    let runs = v.histograms(metrics::DEVMETRICS_WORKFLOW_RUN_DURATION_SECONDS);
    let top = slowest(&runs, &["repo", "workflow"], 10);
    body.push_str("<h2>Slowest workflows</h2>");
    body.push_str(&chart("Mean run duration by workflow", &top, duration));
    body.push_str(&table(
        &["repo / workflow", "mean duration", "runs"],
        &ranked(&top, duration),
        "no completed runs yet",
    ));
    let run_counts = v.numbers(metrics::DEVMETRICS_WORKFLOW_RUNS_TOTAL);
    let flaky = flakiest(&run_counts, &["repo", "workflow"], 10);
    body.push_str("<h2>Flakiest workflows</h2>");
    body.push_str(&table(
        &["repo / workflow", "failed share", "runs"],
        &ranked(&flaky, percent),
        "no failed runs",
    ));
    let jobs = v.histograms(metrics::DEVMETRICS_WORKFLOW_JOB_DURATION_SECONDS);
    let top_jobs = slowest(&jobs, &["repo", "workflow", "job"], 10);
    body.push_str("<h2>Slowest jobs</h2>");
    body.push_str(&table(
        &["repo / workflow / job", "mean duration", "jobs"],
        &ranked(&top_jobs, duration),
        "no completed jobs yet",
    ));
    let job_counts = v.numbers(metrics::DEVMETRICS_WORKFLOW_JOBS_TOTAL);
    let flaky_jobs = flakiest(&job_counts, &["repo", "workflow", "job"], 10);
    body.push_str("<h2>Flakiest jobs</h2>");
    body.push_str(&table(
        &["repo / workflow / job", "failed share", "jobs"],
        &ranked(&flaky_jobs, percent),
        "no failed jobs",
    ));
    let queued = v.histograms(metrics::DEVMETRICS_WORKFLOW_JOB_QUEUE_DURATION_SECONDS);
    let waits = slowest(&queued, &["runner_group", "runner_labels"], 20);
    body.push_str("<h2>Queue time by runner group and labels</h2>");
    body.push_str(&chart(
        "Mean queue time by runner group and labels",
        &waits,
        duration,
    ));
    body.push_str(&table(
        &["runner group / labels", "mean wait", "jobs"],
        &ranked(&waits, duration),
        "no jobs started yet",
    ));
    // Utilisation now: busy runners over the online ones, per group and labels.
    let runners = v.numbers(metrics::DEVMETRICS_WORKFLOW_RUNNERS);
    let mut rows = Vec::new();
    for (k, g) in group(&runners, |n| &n.labels, &["runner_group", "runner_labels"]) {
        let state = |s: &str| -> Vec<&Num> {
            g.iter()
                .copied()
                .filter(|n| label(&n.labels, "state") == s)
                .collect()
        };
        let (busy, idle, offline) = (state("busy"), state("idle"), state("offline"));
        let online: Vec<&Num> = busy.iter().chain(&idle).copied().collect();
        let mut r = text(&k.join(" / "));
        let b = nums_sum(&busy);
        r.push_str(&b.td(&count(b.value)));
        let i = nums_sum(&idle);
        r.push_str(&i.td(&count(i.value)));
        let o = nums_sum(&offline);
        r.push_str(&o.td(&count(o.value)));
        r.push_str(&match Fig::ratio(nums_sum(&busy), nums_sum(&online)) {
            Some(u) => u.td(&percent(u.value)),
            None => text("no runner online"),
        });
        rows.push(r);
    }
    body.push_str("<h2>Self-hosted runners</h2>");
    body.push_str(&table(
        &[
            "runner group / labels",
            "busy",
            "idle",
            "offline",
            "utilisation",
        ],
        &rows,
        "no runner inventory (webhooks.github.runners)",
    ));
    layout("CI", "/status/ci", &body)
}

/// A row of the DORA table: its name, its gauge by (team, window), how it is shown, and the
/// `metric` label of its level.
type Key<'a> = (
    &'a str,
    &'a BTreeMap<(String, String), Num>,
    fn(f64) -> String,
    &'a str,
);

pub async fn dora(State(s): State<Shared>) -> Html<String> {
    let v = View::load(&s).await;
    let by = |fid| -> BTreeMap<(String, String), Num> {
        v.numbers(fid)
            .into_iter()
            .map(|n| ((label(&n.labels, "team"), label(&n.labels, "window")), n))
            .collect()
    };
    let freq = by(metrics::DORA_DEPLOYMENT_FREQUENCY);
    let lead = by(metrics::DORA_LEAD_TIME_MEDIAN_SECONDS);
    let cfr = by(metrics::DORA_CHANGE_FAILURE_RATE);
    let recovery = by(metrics::DORA_RECOVERY_MEDIAN_SECONDS);
    // The level each key is at: the one series of (team, window, metric) at 1.
    let mut level: BTreeMap<(String, String, String), Num> = BTreeMap::new();
    for n in v.numbers(metrics::DORA_PERFORMANCE_LEVEL) {
        if n.value == 1.0 {
            level.insert(
                (
                    label(&n.labels, "team"),
                    label(&n.labels, "window"),
                    label(&n.labels, "metric"),
                ),
                n,
            );
        }
    }
    let mut teams: Vec<&String> = freq.keys().map(|(t, _)| t).collect();
    teams.dedup();
    let windows = ["7d", "30d", "90d"];
    let mut body = String::from(
        "<p class=\"note\">The four keys per team over the last 7, 30 and 90 days, with the DORA level of each; reading across the windows shows the trend.</p>",
    );
    if teams.is_empty() {
        body.push_str(
            "<p>No DORA figures yet (the dora section is off, or no event has arrived).</p>",
        );
    }
    for team in teams {
        let _ = write!(body, "<h2>{}</h2>", esc(team));
        let mut rows = Vec::new();
        let keys: [Key; 4] = [
            (
                "deployment frequency",
                &freq,
                |x| format!("{x:.2}/day"),
                "deployment_frequency",
            ),
            ("lead time (median)", &lead, duration, "lead_time"),
            ("change failure rate", &cfr, percent, "change_failure_rate"),
            ("recovery (median)", &recovery, duration, "recovery_time"),
        ];
        for (name, map, shown, metric) in keys {
            let mut r = text(name);
            for w in windows {
                let k = (team.clone(), w.to_string());
                r.push_str(&match map.get(&k) {
                    Some(n) => Fig::one(n).td(&shown(n.value)),
                    None => text(""),
                });
                r.push_str(
                    &match level.get(&(team.clone(), w.to_string(), metric.to_string())) {
                        Some(n) => format!(
                            "<td {}>{}</td>",
                            Fig::one(n).attrs(),
                            esc(&label(&n.labels, "level"))
                        ),
                        None => text(""),
                    },
                );
            }
            rows.push(r);
        }
        let mut r = text("overall (the lowest level)");
        for w in windows {
            r.push_str(&text(""));
            r.push_str(
                &match level.get(&(team.clone(), w.to_string(), "overall".to_string())) {
                    Some(n) => format!(
                        "<td {}><b>{}</b></td>",
                        Fig::one(n).attrs(),
                        esc(&label(&n.labels, "level"))
                    ),
                    None => text(""),
                },
            );
        }
        rows.push(r);
        body.push_str(&table(
            &["key", "7d", "level", "30d", "level", "90d", "level"],
            &rows,
            "",
        ));
    }
    layout("DORA", "/status/dora", &body)
}

pub async fn copilot(State(s): State<Shared>) -> Html<String> {
    let v = View::load(&s).await;
    let mut body = String::from(
        "<p class=\"note\">Adoption from the seats API and the usage-metrics reports: active users as the latest report states them, the accepted share of suggestions over its 28 days, and per-team activity of the latest day.</p>",
    );
    let active = v.numbers(metrics::DEVMETRICS_COPILOT_ACTIVE_USERS);
    let seats = v.numbers(metrics::DEVMETRICS_COPILOT_SEATS);
    let gen_ = v.numbers(metrics::GH_COPILOT_USAGE_CODE_GENERATION_ACTIVITY_COUNT);
    let acc = v.numbers(metrics::GH_COPILOT_USAGE_CODE_ACCEPTANCE_ACTIVITY_COUNT);
    let totals = |ns: &[Num], org: &str, scope: &str, window: &str| -> Vec<usize> {
        ns.iter()
            .enumerate()
            .filter(|(_, n)| {
                let l = &n.labels;
                label(l, "org") == org
                    && label(l, "scope") == scope
                    && label(l, "window") == window
                    && label(l, "user") == "all"
                    && label(l, "team").is_empty()
                    && ["ide", "feature", "language", "model"]
                        .iter()
                        .all(|b| label(l, b).is_empty())
            })
            .map(|(i, _)| i)
            .collect()
    };
    let mut orgs: Vec<(String, String)> = active
        .iter()
        .map(|n| (label(&n.labels, "org"), label(&n.labels, "scope")))
        .chain(
            seats
                .iter()
                .map(|n| (label(&n.labels, "org"), "org".to_string())),
        )
        .collect();
    orgs.sort();
    orgs.dedup();
    let mut rows = Vec::new();
    for (org, scope) in &orgs {
        let mut r = format!("{}{}", text(org), text(scope));
        for period in ["daily", "weekly", "monthly"] {
            r.push_str(&match active.iter().find(|n| {
                label(&n.labels, "org") == *org
                    && label(&n.labels, "scope") == *scope
                    && label(&n.labels, "window") == "28d"
                    && label(&n.labels, "period") == period
            }) {
                Some(n) => Fig::one(n).td(&count(n.value)),
                None => text(""),
            });
        }
        for state in ["total", "assigned"] {
            r.push_str(&match seats
                .iter()
                .find(|n| label(&n.labels, "org") == *org && label(&n.labels, "state") == state)
            {
                Some(n) if scope == "org" => Fig::one(n).td(&count(n.value)),
                _ => text(""),
            });
        }
        let pick = |ns: &[Num]| -> Fig {
            let idx = totals(ns, org, scope, "28d");
            Fig::sum(idx.iter().map(|i| (&ns[*i].key, ns[*i].value)))
        };
        r.push_str(&match Fig::ratio(pick(&acc), pick(&gen_)) {
            Some(f) => f.td(&percent(f.value)),
            None => text(""),
        });
        rows.push(r);
    }
    body.push_str("<h2>Adoption</h2>");
    body.push_str(&table(
        &[
            "org",
            "scope",
            "daily active",
            "weekly active",
            "monthly active",
            "seats",
            "seats assigned",
            "accepted share (28d)",
        ],
        &rows,
        "no Copilot figures yet (the copilot section is off, or no report was read)",
    ));
    // Teams: the latest day's activity.
    let team_rows: Vec<&Num> = gen_
        .iter()
        .filter(|n| {
            label(&n.labels, "scope") == "team"
                && label(&n.labels, "ide").is_empty()
                && label(&n.labels, "feature").is_empty()
                && label(&n.labels, "language").is_empty()
                && label(&n.labels, "model").is_empty()
        })
        .collect();
    let mut rows = Vec::new();
    let mut chart_items = Vec::new();
    for n in &team_rows {
        let (org, team) = (label(&n.labels, "org"), label(&n.labels, "team"));
        let mut r = format!("{}{}", text(&org), text(&team));
        r.push_str(&Fig::one(n).td(&count(n.value)));
        let accepted = acc.iter().find(|a| a.labels == n.labels);
        r.push_str(&match accepted {
            Some(a) => Fig::one(a).td(&count(a.value)),
            None => text(""),
        });
        chart_items.push((format!("{org} / {team}"), n.value, count(n.value)));
        rows.push(r);
    }
    if !rows.is_empty() {
        body.push_str("<h2>Teams (latest day)</h2>");
        body.push_str(&bars("Code generations per team, latest day", &chart_items));
        body.push_str(&table(
            &["org", "team", "code generations", "accepted"],
            &rows,
            "",
        ));
    }
    // Each report's state at its last read.
    let mut rows = Vec::new();
    for n in v.numbers(metrics::DEVMETRICS_COPILOT_REPORT_STATE) {
        if n.value != 1.0 {
            continue;
        }
        let state = label(&n.labels, "state");
        let class = if state == "ok" { "ok" } else { "bad" };
        rows.push(format!(
            "{}{}<td class=\"{class}\" {}>{}</td>",
            text(&label(&n.labels, "org")),
            text(&label(&n.labels, "report")),
            Fig::one(&n).attrs(),
            esc(&state)
        ));
    }
    body.push_str("<h2>Reports</h2>");
    body.push_str(&table(
        &["org", "report", "state"],
        &rows,
        "no report read yet",
    ));
    layout("Copilot", "/status/copilot", &body)
}
