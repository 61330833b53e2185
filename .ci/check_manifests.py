"""Checks of rendered chart manifests that a schema cannot express: least-privilege RBAC and
hardened containers. Usage: python3 .ci/check_manifests.py rendered.yaml"""
import sys

import yaml

problems = []
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    kind, name = d.get("kind"), d.get("metadata", {}).get("name")
    if kind in ("Role", "ClusterRole"):
        if kind == "ClusterRole":
            problems.append(f"{kind}/{name}: no cluster-wide roles")
        for rule in d.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                if "*" in (rule.get(field) or []):
                    problems.append(f"{kind}/{name}: wildcard in {field}")
            if "secrets" in rule.get("resources", []) and not rule.get("resourceNames"):
                problems.append(f"{kind}/{name}: secrets access must name the secrets")
    if kind == "Deployment":
        pod = d["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                problems.append(f"{name}/{c['name']}: must run as non-root")
            if not sc.get("readOnlyRootFilesystem"):
                problems.append(f"{name}/{c['name']}: root filesystem must be read-only")
            if sc.get("allowPrivilegeEscalation", True):
                problems.append(f"{name}/{c['name']}: privilege escalation must be off")
            if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
                problems.append(f"{name}/{c['name']}: must drop ALL capabilities")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccomp profile must be RuntimeDefault")
for p in problems:
    print("FAIL", p)
print(f"{len(docs)} manifests checked, {len(problems)} problems")
sys.exit(1 if problems else 0)
