"""Pulls the alerting objects out of rendered chart manifests so promtool can check them, since a
schema validator does not know the PrometheusRule CRD. Writes each PrometheusRule's spec as a rule
file, and each Grafana dashboard's queries (Grafana variables replaced) as recording rules, so
`promtool check rules` parses every PromQL expression the chart ships.
Usage: python3 .ci/check_alerting.py rendered.yaml OUT_DIR on|off   (on: both must be rendered)"""
import json
import os
import re
import sys

import yaml

rendered, out, expect = sys.argv[1], sys.argv[2], sys.argv[3] == "on"
os.makedirs(out, exist_ok=True)
problems = []
rules = dashboards = 0
for d in (d for d in yaml.safe_load_all(open(rendered)) if d):
    kind, name = d.get("kind"), d["metadata"]["name"]
    if kind == "PrometheusRule":
        rules += 1
        with open(os.path.join(out, f"{name}.rules.yaml"), "w") as f:
            yaml.safe_dump(d["spec"], f)
    if kind == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {}):
        for key, text in d.get("data", {}).items():
            dashboards += 1
            try:
                dash = json.loads(text)
            except ValueError as e:
                problems.append(f"ConfigMap/{name} {key}: not JSON: {e}")
                continue
            recorded = []
            for panel in dash.get("panels", []):
                for t in panel.get("targets", []):
                    expr = t["expr"].replace("$__rate_interval", "5m").replace("$namespace", ".*")
                    if "$" in expr:
                        problems.append(f"{key} panel {panel['id']}: unknown variable in {expr}")
                    recorded.append({"record": f"dashboard:panel_{panel['id']}:{t['refId']}", "expr": expr})
            with open(os.path.join(out, f"{name}-{re.sub(r'[^a-z0-9]+', '-', key)}.rules.yaml"), "w") as f:
                yaml.safe_dump({"groups": [{"name": key, "rules": recorded}]}, f)
if expect and not (rules and dashboards):
    problems.append(f"expected a PrometheusRule and a dashboard, got {rules} and {dashboards}")
if not expect and (rules or dashboards):
    problems.append(f"alerting is off by default, but {rules} PrometheusRule(s), {dashboards} dashboard(s) rendered")
for p in problems:
    print("FAIL", p)
print(f"{rules} PrometheusRule(s), {dashboards} dashboard(s) extracted to {out}, {len(problems)} problems")
sys.exit(1 if problems else 0)
