//! What ships in `deploy/` works: every rule file passes `promtool` and its unit tests, reads
//! only families and labels of the catalog, and every alert has its runbook section; every
//! Grafana dashboard takes its datasource as a variable and queries only the catalog.

use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::compat::dashboards::dashboard_needs;
use crate::compat::promql_needs;
use crate::compat::rules::rules;

use crate::support;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir` ending in `ext`, sorted.
fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    out.sort();
    out
}

/// The catalog family a metric name of a query belongs to, and the labels it adds
/// (`le` of a histogram's buckets).
fn family_of(metric: &str) -> Option<(&'static devmetrics::metrics::FamilyDef, Vec<&'static str>)> {
    use devmetrics::metrics::{FAMILIES, Kind};
    if let Some(f) = FAMILIES.iter().find(|f| f.name == metric) {
        return Some((f, Vec::new()));
    }
    for (suffix, extra) in [
        ("_bucket", vec!["le"]),
        ("_sum", vec![]),
        ("_count", vec![]),
    ] {
        if let Some(base) = metric.strip_suffix(suffix)
            && let Some(f) = FAMILIES
                .iter()
                .find(|f| f.name == base && f.kind == Kind::Histogram)
        {
            return Some((f, extra));
        }
    }
    None
}

/// Every (metric, labels) read is a catalog family with those labels, or a recorded series.
fn check_needs(what: &str, needs: &[(String, BTreeSet<String>)], recorded: &BTreeSet<String>) {
    for (metric, labels) in needs {
        if recorded.contains(metric) {
            continue;
        }
        let (def, extra) = family_of(metric)
            .unwrap_or_else(|| panic!("{what} reads {metric}, not in the catalog"));
        for l in labels {
            assert!(
                def.labels.contains(&l.as_str())
                    || extra.contains(&l.as_str())
                    || l == "instance"
                    || l == "job",
                "{what}: {metric} has no label {l}"
            );
        }
    }
}

fn recorded() -> BTreeSet<String> {
    files("deploy/prometheus", ".yaml")
        .iter()
        .flat_map(|p| rules(&std::fs::read_to_string(p).unwrap()))
        .filter(|r| r.0 == "record")
        .map(|r| r.1)
        .collect()
}

#[test]
fn our_rules_read_only_the_catalog_and_every_alert_has_its_runbook() {
    let text =
        std::fs::read_to_string(root().join("deploy/prometheus/devmetrics-rules.yaml")).unwrap();
    let all = rules(&text);
    let recorded = recorded();
    let alerts: Vec<_> = all.iter().filter(|r| r.0 == "alert").collect();
    assert!(alerts.len() >= 10, "{} alerts", alerts.len());
    for (_, name, expr, _) in &all {
        check_needs(name, &promql_needs(expr), &recorded);
    }
    let runbook = std::fs::read_to_string(root().join("docs/runbook.md")).unwrap();
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for group in v["groups"].as_sequence().unwrap() {
        for r in group["rules"].as_sequence().unwrap() {
            let Some(alert) = r["alert"].as_str() else {
                continue;
            };
            let anchor = alert.to_ascii_lowercase();
            assert!(
                sections.contains(&anchor),
                "docs/runbook.md has no section {alert}"
            );
            assert_eq!(
                r["annotations"]["runbook"].as_str(),
                Some(format!("docs/runbook.md#{anchor}").as_str()),
                "{alert}'s runbook annotation"
            );
            assert!(
                r["labels"]["severity"].as_str().is_some(),
                "{alert} has a severity"
            );
        }
    }
    // No section without its alert.
    let names: BTreeSet<String> = alerts.iter().map(|a| a.1.to_ascii_lowercase()).collect();
    for s in &sections {
        assert!(
            names.contains(s),
            "docs/runbook.md section {s} has no alert"
        );
    }
}

#[test]
fn promtool_checks_every_rule_file_and_runs_its_unit_tests() {
    let Some(()) = support::tool("promtool", "--version", "Debian: apt install prometheus") else {
        return;
    };
    let dir = root().join("deploy/prometheus");
    let rule_files = files("deploy/prometheus", ".yaml");
    let tests = files("deploy/prometheus/tests", ".test.yaml");
    assert!(
        rule_files.len() >= 2 && tests.len() == rule_files.len(),
        "{rule_files:?} {tests:?}"
    );
    let mut runs: Vec<Vec<String>> = Vec::new();
    for f in &rule_files {
        runs.push(vec![
            "check".into(),
            "rules".into(),
            f.display().to_string(),
        ]);
    }
    for t in &tests {
        runs.push(vec!["test".into(), "rules".into(), t.display().to_string()]);
    }
    for args in runs {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `datasource` object of a dashboard names the `${datasource}` variable.
fn datasources_are_the_variable(path: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "datasource" {
                    let uid = x.get("uid").and_then(|u| u.as_str());
                    assert!(
                        uid == Some("${datasource}") || x.as_str() == Some("${datasource}"),
                        "{path}: datasource {x} is not the ${{datasource}} variable"
                    );
                } else {
                    datasources_are_the_variable(path, x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| datasources_are_the_variable(path, x)),
        _ => {}
    }
}

#[test]
fn dashboards_take_the_datasource_as_a_variable_and_query_only_the_catalog() {
    let dashboards = files("deploy/grafana/dashboards", ".json");
    assert!(dashboards.len() >= 6, "{dashboards:?}");
    let recorded = recorded();
    let mut uids = BTreeSet::new();
    for p in &dashboards {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let uid = json["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} twice");
        assert!(
            json["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name} title"
        );
        let vars = json["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name} has no prometheus datasource variable"
        );
        for v in vars.iter().filter(|v| v["name"] != "datasource") {
            datasources_are_the_variable(&name, v);
        }
        for panel in json["panels"].as_array().unwrap() {
            datasources_are_the_variable(&name, panel);
        }
        let needs = dashboard_needs(&json);
        assert!(needs.len() >= 5, "{name} queries little: {needs:?}");
        check_needs(&name, &needs, &recorded);
    }
}

/// Runs `check-config` on `text` with its secret paths (`/run/secrets/…`,
/// `/etc/devmetrics-ha/…`) moved into a temporary directory that holds each file it names.
fn check_config(text: &str, env: &[(&str, &str)]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let mut text = text.to_string();
    for mount in ["/run/secrets/", "/etc/devmetrics-ha/", "/etc/devmetrics/"] {
        text = text.replace(mount, &format!("{}/", secrets.display()));
    }
    let prefix = format!("{}/", secrets.display());
    for (i, _) in text.match_indices(&prefix) {
        let name: String = text[i + prefix.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .collect();
        let value = if name == "redis-url" {
            "redis://:pw@127.0.0.1:6379/0\n"
        } else if name.contains("appinsights") {
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://example.invalid/\n"
        } else {
            "a-secret-value-for-the-test\n"
        };
        std::fs::write(secrets.join(&name), value).unwrap();
    }
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["check-config", "--config.file"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.starts_with("configuration is valid") {
        Ok(())
    } else {
        Err(said)
    }
}

const RABBITMQ_URL: (&str, &str) = (
    "DEVMETRICS_QUEUE__RABBITMQ__URL",
    "amqp://user:pw@127.0.0.1:5672/%2f",
);

#[test]
fn every_example_config_passes_check_config() {
    let mut configs = files("deploy/examples", ".yaml");
    configs.extend([
        root().join("deploy/kustomize/base/config.yaml"),
        root().join("deploy/kustomize/overlays/single/config.yaml"),
        root().join("deploy/kustomize/overlays/ha/config.yaml"),
    ]);
    assert!(configs.len() >= 9, "{configs:?}");
    for p in &configs {
        let text = std::fs::read_to_string(p).unwrap();
        if let Err(e) = check_config(&text, &[RABBITMQ_URL]) {
            panic!("{}: {e}", p.display());
        }
    }
    // And the check can fail: a missing secret file names its key.
    let text = std::fs::read_to_string(root().join("deploy/examples/dora.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dora.yaml");
    std::fs::write(&path, text.replace("/run/secrets/", "/nonexistent/")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
        .args(["check-config", "--config.file"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("_file"));
}

#[test]
fn the_image_and_the_unit_start_the_binary_with_flags_it_has() {
    let docker = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let unit = std::fs::read_to_string(root().join("deploy/systemd/devmetrics.service")).unwrap();
    let help = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?} --help");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let serve = help(&["serve"]);
    let healthcheck = help(&["healthcheck"]);
    assert!(docker.contains(r#"CMD ["serve", "--config.file", "/etc/devmetrics/config.yaml"]"#));
    assert!(docker.contains(r#"CMD ["/usr/local/bin/devmetrics", "healthcheck", "--config.file", "/etc/devmetrics/config.yaml"]"#));
    assert!(serve.contains("--config.file") && healthcheck.contains("--config.file"));
    assert!(docker.contains("EXPOSE 10477"));
    let user = docker
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image names its user");
    assert!(
        user.split(':')
            .all(|p| p.parse::<u32>().is_ok_and(|n| n > 0)),
        "USER {user} is numeric and not root"
    );
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    for flag in exec.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(
            serve.contains(flag),
            "ExecStart's {flag} is not a serve flag"
        );
    }
}

#[test]
fn systemd_verifies_the_unit() {
    let Some(()) = support::tool("systemd-analyze", "--version", "Debian: systemd") else {
        return;
    };
    let unit = std::fs::read_to_string(root().join("deploy/systemd/devmetrics.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devmetrics.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/devmetrics",
            env!("CARGO_BIN_EXE_devmetrics"),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kustomize_renders_every_overlay_with_a_valid_config() {
    let Some(()) = support::tool("kubectl", "version", "the Kubernetes client") else {
        return;
    };
    for overlay in ["base", "overlays/single", "overlays/ha"] {
        let out = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(root().join("deploy/kustomize").join(overlay))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{overlay}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs: Vec<serde_yaml::Value> =
            serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
                .map(|d| serde_yaml::Value::deserialize(d).unwrap())
                .collect();
        let workload = if overlay.ends_with("ha") {
            "Deployment"
        } else {
            "StatefulSet"
        };
        assert!(
            docs.iter().any(|d| d["kind"] == workload),
            "{overlay}: no {workload}"
        );
        let config = docs
            .iter()
            .find_map(|d| d["data"]["config.yaml"].as_str())
            .unwrap_or_else(|| panic!("{overlay}: no config.yaml ConfigMap"));
        if let Err(e) = check_config(config, &[RABBITMQ_URL]) {
            panic!("{overlay}'s config: {e}");
        }
    }
}

/// The Helm chart, rendered by the Helm SDK that helm-python-sdk embeds (no helm binary):
/// each value set lints clean and renders what it asks for with a config `check-config`
/// accepts, and each refused set is refused with its reason.
#[test]
fn the_helm_chart_renders_every_value_set() {
    let python = std::env::var("DEVMETRICS_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_sdk = std::process::Command::new(&python)
        .args(["-c", "import helm_python, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sdk {
        let msg =
            "helm-python-sdk is not installed (pip install helm-python-sdk pyyaml into .venv)";
        if std::env::var("DEVMETRICS_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("{msg} and DEVMETRICS_REQUIRE_SERVICES=1");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let chart = root().join("deploy/helm/devmetrics");
    let render = |values: serde_json::Value| -> serde_json::Value {
        let out = std::process::Command::new(&python)
            .arg(root().join("deploy/helm/render.py"))
            .arg(&chart)
            .arg(values.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let kinds = |r: &serde_json::Value| -> Vec<String> {
        r["docs"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let config_of = |r: &serde_json::Value| -> String {
        r["docs"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|d| d["data"]["config.yaml"].as_str())
            .expect("a config.yaml ConfigMap")
            .to_string()
    };
    let cases = [
        ("defaults", serde_json::json!({}), "StatefulSet"),
        (
            "webhooks on their own port",
            serde_json::json!({"secrets": {"github-webhook": "s"}, "config": {"webhooks": {"listen_address": ":10478", "github": {"secrets": [{"value_file": "/run/secrets/github-webhook"}]}}}}),
            "StatefulSet",
        ),
        (
            "ha on redis and rabbitmq",
            serde_json::json!({"ha": {"enabled": true, "redis": {"url": "redis://:pw@redis:6379/0"}, "queue": {"rabbitmq": {"url": "amqp://u:p@rabbit:5672/%2f"}}}}),
            "Deployment",
        ),
        (
            "ha on redis streams",
            serde_json::json!({"ha": {"enabled": true, "redis": {"url": "redis://:pw@redis:6379/0"}, "queue": {"backend": "redis"}}}),
            "Deployment",
        ),
    ];
    for (name, values, workload) in cases {
        let r = render(values);
        assert_eq!(r["lint"], serde_json::json!([]), "{name}");
        let k = kinds(&r);
        for want in [workload, "Service", "ConfigMap"] {
            assert!(k.iter().any(|x| x == want), "{name}: no {want} in {k:?}");
        }
        if let Err(e) = check_config(&config_of(&r), &[RABBITMQ_URL]) {
            panic!("{name}: {e}");
        }
        // Non-root, read-only root filesystem, probes on the health endpoints.
        let pod = &r["docs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["kind"] == workload)
            .unwrap()["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
    }
    // Monitoring: the rules and dashboards that ship, unchanged.
    let r = render(
        serde_json::json!({"serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true}, "dashboards": {"enabled": true}}),
    );
    let docs = r["docs"].as_array().unwrap();
    assert!(docs.iter().any(|d| d["kind"] == "ServiceMonitor"));
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("PrometheusRule");
    let shipped: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/devmetrics-rules.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule["spec"]["groups"], shipped["groups"]);
    let dashboards = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .count();
    assert_eq!(
        dashboards,
        files("deploy/grafana/dashboards", ".json").len()
    );
    // Refused with the reason.
    for (values, reason) in [
        (
            serde_json::json!({"ha": {"enabled": true}}),
            "ha.enabled needs Redis",
        ),
        (
            serde_json::json!({"ha": {"enabled": true, "redis": {"url": "redis://r:6379/0"}}}),
            "needs its URL",
        ),
    ] {
        let r = render(values);
        assert!(
            r["error"].as_str().is_some_and(|e| e.contains(reason)),
            "{reason}: {r}"
        );
    }
}

/// The image's HEALTHCHECK: 0 while the service answers /readyz, 1 when nothing listens.
#[tokio::test]
async fn healthcheck_probes_the_running_service() {
    let dir = tempfile::tempdir().unwrap();
    let running = crate::support::start(crate::support::config_with(dir.path(), &[]), "http").await;
    let probe = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_devmetrics"))
            .args(["healthcheck", "--url", &url])
            .output()
            .unwrap()
    };
    let url = format!("{}/readyz", running.base);
    let ok = tokio::task::spawn_blocking(move || probe(url))
        .await
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let port = crate::compat::free_port();
    let down =
        tokio::task::spawn_blocking(move || probe(format!("http://127.0.0.1:{port}/readyz")))
            .await
            .unwrap();
    assert_eq!(down.status.code(), Some(1));
    running.stop().await;
}

/// The configuration examples in the docs (YAML blocks starting with one of our sections)
/// pass `check-config` too.
#[test]
fn every_config_example_in_the_docs_passes_check_config() {
    const SECTIONS: &[&str] = &[
        "web:",
        "log:",
        "storage:",
        "queue:",
        "ha:",
        "github:",
        "webhooks:",
        "spacelift:",
        "dora:",
        "copilot:",
        "push:",
    ];
    let mut pages = vec![root().join("README.md")];
    for dir in ["docs", "docs/sources", "docs/migrate"] {
        pages.extend(files(dir, ".md"));
    }
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for block in text.split("```yaml\n").skip(1) {
            let block = block.split("```").next().unwrap_or("");
            let first = block
                .lines()
                .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .unwrap_or("");
            if !SECTIONS.iter().any(|s| first.starts_with(s)) {
                continue;
            }
            // A section's example may lean on the org of another (runners, recovery).
            let mut full = block.to_string();
            if !block.lines().any(|l| l.starts_with("github:")) {
                full.push_str("\ngithub:\n  orgs:\n    - org: my-org\n      token_file: /run/secrets/github-token\n");
            }
            if let Err(e) = check_config(&full, &[RABBITMQ_URL]) {
                panic!(
                    "{}: this example fails check-config:\n{block}\n{e}",
                    page.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} examples found");
}
