"""Checks of rendered chart manifests that a schema cannot express: least-privilege RBAC,
hardened containers, and memory isolation (SPEC §5): the controllers' container spawns no
`claude` turn, and the container that does has a memory limit of at least one per-turn estimate
for every turn it may run at once. Usage: python3 .ci/check_manifests.py rendered.yaml"""
import re
import sys

import yaml

# MiB one real `claude -p` turn may take at peak (~213 MB peak measured in the sidecar hardening review; docs/operations.md).
PER_TURN_MIB = 220
UNITS = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024, "": 1 / (1024 * 1024),
         "k": 1000 / 1024 / 1024, "M": 1000**2 / 1024**2, "G": 1000**3 / 1024**2}


def mib(quantity):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMG])?", str(quantity))
    if not m:
        raise ValueError(f"unsupported memory quantity {quantity!r}")
    return float(m.group(1)) * UNITS[m.group(2) or ""]


def env(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_memory_isolation(name, containers):
    """The CLI-spawning routes live in their own container, sized for its turns."""
    by_args = {c["name"]: c for c in containers}
    controllers = [c for c in containers if (c.get("args") or [None])[0] == "run"]
    sidecars = [c for c in containers if (c.get("args") or [None])[0] == "sidecar"]
    if len(controllers) != 1 or len(sidecars) != 1:
        problems.append(f"{name}: want one `run` and one `sidecar` container, got {sorted(by_args)}")
        return
    run, sidecar = controllers[0], sidecars[0]
    args = run.get("args", [])
    if "--routes" not in args or args[args.index("--routes") + 1] != "controller":
        problems.append(f"{name}/{run['name']}: `run` must serve `--routes controller` (no CLI turns)")
    if any(k.startswith(("AFK_CLAUDE", "AFK_MAX_CONCURRENT", "AFK_BREAKGLASS", "AFK_PVE")) for k in env(run)):
        problems.append(f"{name}/{run['name']}: CLI settings on the controllers' container")
    e = env(sidecar)
    turns = int(e.get("AFK_MAX_CONCURRENT_TURNS") or 4) + int(e.get("AFK_BREAKGLASS_MAX_SESSIONS") or 8)
    limit = sidecar.get("resources", {}).get("limits", {}).get("memory")
    if limit is None:
        problems.append(f"{name}/{sidecar['name']}: no memory limit")
    elif mib(limit) < turns * PER_TURN_MIB:
        problems.append(f"{name}/{sidecar['name']}: memory limit {limit} is below {turns} turns x "
                        f"{PER_TURN_MIB} MiB = {turns * PER_TURN_MIB} MiB")
    else:
        print(f"{name}/{sidecar['name']}: memory limit {limit} >= {turns} turns x {PER_TURN_MIB} MiB")


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
        check_memory_isolation(name, pod.get("containers", []))
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccomp profile must be RuntimeDefault")
for p in problems:
    print("FAIL", p)
print(f"{len(docs)} manifests checked, {len(problems)} problems")
sys.exit(1 if problems else 0)
