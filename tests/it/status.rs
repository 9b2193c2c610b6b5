//! The status pages, loaded from `demo` in headless Chromium (Debian's `chromium`): no console
//! message, every link answers, and every figure a page shows equals what `/metrics` says
//! (each figure names the series it comes from, summed or divided, and the test recomputes it).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::compat::{free_port, get};

const PAGES: &[&str] = &[
    "/",
    "/status/queue",
    "/status/ci",
    "/status/dora",
    "/status/copilot",
];

fn chromium() -> Option<&'static str> {
    for bin in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(bin);
        }
    }
    let msg = "chromium is not installed (Debian: apt install chromium)";
    if std::env::var("DEVMETRICS_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{msg} and DEVMETRICS_REQUIRE_SERVICES=1");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// The page's DOM after Chromium loaded it, and what its console said.
async fn load(bin: &'static str, url: String) -> (String, Vec<String>) {
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .unwrap();
        let console = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("CONSOLE"))
            .map(str::to_string)
            .collect();
        (String::from_utf8_lossy(&out.stdout).to_string(), console)
    })
    .await
    .unwrap()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Every `name="value"` of the DOM's tags, per tag that has a `data-value`.
fn figures(dom: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    for tag in dom.split('<').filter(|t| t.contains("data-value=\"")) {
        let tag = tag.split('>').next().unwrap_or("");
        let mut attrs = BTreeMap::new();
        let mut rest = tag;
        while let Some(eq) = rest.find("=\"") {
            let name = rest[..eq].rsplit(' ').next().unwrap_or("").to_string();
            let after = &rest[eq + 2..];
            let Some(end) = after.find('"') else { break };
            attrs.insert(name, unescape(&after[..end]));
            rest = &after[end + 1..];
        }
        out.push(attrs);
    }
    out
}

fn hrefs(dom: &str) -> Vec<String> {
    dom.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(unescape)
        .collect()
}

/// `/metrics` (text format) as series → value.
/// What a figure should be, from `/metrics`; `Err` names a series `/metrics` lacks.
fn expected(f: &BTreeMap<String, String>, m: &BTreeMap<String, f64>) -> Result<f64, String> {
    let sum = |keys: &[String]| -> Result<f64, String> {
        keys.iter()
            .map(|k| m.get(k).copied().ok_or_else(|| k.clone()))
            .sum()
    };
    if let Some(k) = f.get("data-series") {
        return m.get(k).copied().ok_or_else(|| k.clone());
    }
    if let Some(s) = f.get("data-sum") {
        let keys: Vec<String> = serde_json::from_str(s).unwrap();
        return sum(&keys);
    }
    let [a, b]: [Vec<String>; 2] =
        serde_json::from_str(f.get("data-ratio").expect("a figure says how")).unwrap();
    Ok(sum(&a)? / sum(&b)?)
}

/// Compares a page's figures with `/metrics` fetched right after it; `Err` says what differs.
fn compare(dom: &str, metrics: &BTreeMap<String, f64>) -> Result<usize, String> {
    let figs = figures(dom);
    for f in &figs {
        let shown: f64 = f["data-value"].parse().map_err(|_| format!("{f:?}"))?;
        let want = expected(f, metrics).map_err(|k| format!("{k} is not in /metrics ({f:?})"))?;
        if (shown - want).abs() > 1e-9 * want.abs().max(1.0) {
            return Err(format!("shows {shown}, /metrics gives {want}: {f:?}"));
        }
    }
    Ok(figs.len())
}

/// Like [`compare`], for a page rendered between two scrapes: each figure must lie between
/// what the scrape before and the scrape after give (a counter that moved meanwhile shows a
/// value in that range).
fn compare_between(
    dom: &str,
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> Result<usize, String> {
    let figs = figures(dom);
    for f in &figs {
        let shown: f64 = f["data-value"].parse().map_err(|_| format!("{f:?}"))?;
        let want = |m| expected(f, m).map_err(|k| format!("{k} is not in /metrics ({f:?})"));
        let (a, b) = (want(before)?, want(after)?);
        let eps = 1e-9 * a.abs().max(b.abs()).max(1.0);
        if shown < a.min(b) - eps || shown > a.max(b) + eps {
            return Err(format!("shows {shown}, /metrics gave {a} then {b}: {f:?}"));
        }
    }
    Ok(figs.len())
}

#[tokio::test]
async fn every_page_loads_cleanly_and_shows_what_metrics_says() {
    let Some(bin) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cfg = crate::support::config_with(
        dir.path(),
        &[("web.listen_addresses", serde_yaml::Value::String(listen))],
    );
    let demo = devmetrics::sim::demo::Demo::start(&mut cfg, 3)
        .await
        .unwrap();
    let running = crate::support::start(cfg, "http").await;
    let base = running.base.clone();
    // Wait for every area's first figures.
    let wanted = [
        "devmetrics_workflow_run_duration_seconds_count",
        "dora_deployment_frequency_per_day",
        "devmetrics_copilot_active_users",
        "devmetrics_queue_depth",
        "devmetrics_github_rate_limit_remaining",
    ];
    for _ in 0..600 {
        let text = get(&format!("{base}/metrics"), None)
            .await
            .map(|r| r.1)
            .unwrap_or_default();
        if wanted.iter().all(|w| text.contains(w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for page in PAGES {
        let url = format!("{base}{page}");
        let mut last = String::new();
        let mut shown = 0;
        // The demo keeps moving: each figure of a page lies between the /metrics just before
        // and just after it, unless something moved both ways meanwhile (a gauge, a ratio),
        // so tries find a still moment (more of them on a busy machine).
        for _ in 0..40 {
            let before = get(&format!("{base}/metrics"), None).await.unwrap().1;
            let (dom, console) = load(bin, url.clone()).await;
            assert!(console.is_empty(), "{page}: console said {console:?}");
            assert!(dom.contains("<h1"), "{page} did not render: {dom}");
            let after = get(&format!("{base}/metrics"), None).await.unwrap().1;
            match compare_between(
                &dom,
                &crate::support::all_series(&before),
                &crate::support::all_series(&after),
            ) {
                Ok(n) => {
                    shown = n;
                    last.clear();
                    // Every link of the page answers.
                    for href in hrefs(&dom) {
                        let target = if href.starts_with('/') {
                            format!("{base}{href}")
                        } else {
                            href.clone()
                        };
                        assert!(
                            !href.starts_with("http") || href.starts_with(&base),
                            "{page} links outside: {href}"
                        );
                        let status = get(&target, None).await.map(|r| r.0);
                        assert_eq!(status, Some(200), "{page}: link {href}");
                    }
                    break;
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(last.is_empty(), "{page}: {last}");
        // Each area shows its first figures (the demo's first runs, report, keys).
        let least = if *page == "/status/queue" { 3 } else { 4 };
        assert!(shown >= least, "{page} shows only {shown} figures");
    }
    running.stop().await;
    drop(demo);
}

/// The figures' formula check can fail: a figure that disagrees with `/metrics` is caught.
#[test]
fn a_figure_that_disagrees_is_caught() {
    let sum = serde_json::to_string(&["a{x=\"1\"}", "b"]).unwrap();
    let ratio = serde_json::to_string(&[["a{x=\"1\"}"], ["b"]]).unwrap();
    let attr = |s: &str| s.replace('&', "&amp;").replace('"', "&quot;");
    let dom = format!(
        r#"<td class="n" data-value="3" data-sum="{}">3</td><td data-value="0.5" data-ratio="{}">50%</td>"#,
        attr(&sum),
        attr(&ratio)
    );
    let dom = dom.as_str();
    let mut m = BTreeMap::from([("a{x=\"1\"}".to_string(), 1.0), ("b".to_string(), 2.0)]);
    assert_eq!(compare(dom, &m), Ok(2));
    // Between two scrapes: a value inside their range passes, one outside it does not.
    let mut later = m.clone();
    later.insert("b".into(), 2.0);
    assert_eq!(compare_between(dom, &m, &later), Ok(2));
    let mut moved = m.clone();
    moved.insert("a{x=\"1\"}".into(), 5.0);
    moved.insert("b".into(), 4.0);
    assert!(compare_between(dom, &moved, &moved).is_err());
    m.insert("b".into(), 3.0);
    assert!(compare(dom, &m).is_err());
    m.remove("b");
    assert!(
        compare(dom, &m)
            .unwrap_err()
            .contains("b is not in /metrics")
    );
}
