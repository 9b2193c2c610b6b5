"""Parse exposition text from stdin with prometheus_client's parsers (independent of ours).

Usage: parse_metrics.py openmetrics|text. Prints one JSON object: {"families": [{name, type,
unit, samples: [[name, labels, value], ...]}]}; exits 1 with the parser's error on rejection.
"""
import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse


def value(v):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return v


def main():
    fmt = sys.argv[1]
    data = sys.stdin.read()
    parse = om_parse if fmt == "openmetrics" else text_parse
    try:
        families = [
            {
                "name": f.name,
                "type": f.type,
                "unit": getattr(f, "unit", ""),
                "samples": [[s.name, s.labels, value(s.value)] for s in f.samples],
            }
            for f in parse(data)
        ]
    except Exception as e:  # the parser's rejection is the test's failure message
        print(f"parser rejected input: {e!r}", file=sys.stderr)
        sys.exit(1)
    json.dump({"families": families}, sys.stdout)


main()
