"""Lints and renders the chart with one set of values, for tests/it/deploy.rs.

Usage: render.py CHART VALUES_JSON. Prints one JSON object: {"docs": [...], "lint": [...]}
with every rendered manifest, or {"error": "..."} when the chart refuses the values. Uses the
Helm SDK that helm-python-sdk (PyPI) embeds, so no helm binary is needed.
"""
import json
import sys

import helm_python as helm
import yaml


def main():
    chart, values = sys.argv[1], json.loads(sys.argv[2])
    lint = helm.lint(chart, values, strict=True)
    problems = lint.get("errors") or [
        m for m in lint.get("messages", []) if m.get("severity", 0) >= 2
    ]
    try:
        with helm.Chart.load(chart) as c:
            out = c.render(values, name="devmetrics", namespace="monitoring", is_install=True)
    except helm.HelmError as e:
        print(json.dumps({"error": str(e), "lint": [str(p) for p in problems]}))
        return
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    print(json.dumps({"docs": docs, "lint": [str(p) for p in problems]}))


main()
