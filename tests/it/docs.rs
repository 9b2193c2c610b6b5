//! Generated documentation must match the code. `UPDATE_DOCS=1 cargo test` rewrites it.

#[test]
fn metrics_reference_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
    let want = devmetrics::metrics::docs::markdown();
    if std::env::var("UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/metrics.md is stale: run `UPDATE_DOCS=1 cargo test --test it docs` (or `devmetrics docs metrics > docs/metrics.md`)"
    );
}

#[test]
fn config_reference_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config-reference.md");
    let want = devmetrics::config::reference::markdown();
    if std::env::var("UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/config-reference.md is stale: run `UPDATE_DOCS=1 cargo test --test it docs` (or `devmetrics docs config > docs/config-reference.md`)"
    );
}

#[test]
fn example_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("example.yaml");
    std::fs::write(&path, devmetrics::config::EXAMPLE).unwrap();
    devmetrics::config::load(Some(&path), &Default::default(), &Default::default())
        .expect("config example must load");
}
