#!/usr/bin/env python3
"""Offline checks of the deployment files that no engine is needed for.

    check_files.py env        DOCKERFILE          print the runtime stage's ENV as KEY=VALUE lines
    check_files.py dockerfile DOCKERFILE          structure: stages, user, signal, health check, ...
    check_files.py compose    COMPOSE_YAML        structure: replicas, gateway, health checks, ...
    check_files.py settings   DEFAULT_TOML FILE.. every GLASSBOX_<SECTION>__<SETTING> named in the
                                                  files is a real setting of config/default.toml
    check_files.py k8s        DIR                 cross-checks of the manifests (ports, probes,
                                                  labels, grace periods, sizing)

Exit status 0 when every check passes; each failure is printed as "FAIL: ...".
"""

import glob
import os
import re
import shlex
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

FAILURES = []


def check(cond, message):
    if cond:
        print(f"  ok: {message}")
    else:
        print(f"  FAIL: {message}")
        FAILURES.append(message)


# --- Dockerfile ------------------------------------------------------------------------------


def instructions(path):
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if buf and line.lstrip().startswith("#"):
                continue  # comment inside a continued instruction
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            buf += line
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages(path):
    """List of (stage name, [instructions]) in order."""
    result = []
    for ins, rest in instructions(path):
        if ins == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(result))
            result.append((name, [(ins, rest)]))
        elif result:
            result[-1][1].append((ins, rest))
    return result


def runtime_env(path):
    env = {}
    for ins, rest in stages(path)[-1][1]:
        if ins == "ENV":
            for token in shlex.split(rest):
                key, sep, value = token.partition("=")
                if sep:
                    env[key] = value
    return env


def cmd_env(path):
    for key, value in runtime_env(path).items():
        print(f"{key}={value}")


def cmd_dockerfile(path):
    print(f"Dockerfile checks: {path}")
    text = open(path).read()
    st = stages(path)
    args = {}
    for ins, rest in instructions(path):
        if ins == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k] = v
        if ins == "FROM":
            break
    froms = [s[1][0][1] for s in st]
    resolve = lambda s: re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s.split()[0])
    images = [resolve(f) for f in froms]
    check(len(st) >= 2, f"multi-stage build ({len(st)} stages: {', '.join(s[0] for s in st)})")
    check(any(i.startswith("rust:") and "bookworm" in i for i in images[:-1]), f"a rust:*-bookworm build stage ({images})")
    check(images[-1] == "debian:bookworm-slim", f"runtime stage is debian:bookworm-slim (got {images[-1]})")
    check("target-cpu=native" not in re.sub(r"#.*", "", text), "no target-cpu=native outside comments")
    check(not re.search(r"^\s*ENV\s+RUSTFLAGS=\"[^\"]*target-cpu", text, re.M), "RUSTFLAGS set no target-cpu")
    runtime = st[-1][1]
    users = [rest for ins, rest in runtime if ins == "USER"]
    check(bool(users) and not users[-1].split(":")[0] in ("root", "0"), f"runtime runs as a non-root user ({users})")
    check(("STOPSIGNAL", "SIGTERM") in runtime, "STOPSIGNAL SIGTERM")
    hc = [rest for ins, rest in runtime if ins == "HEALTHCHECK"]
    check(bool(hc) and "/health" in hc[-1] and "healthcheck.sh" in hc[-1], f"HEALTHCHECK runs healthcheck.sh on /health ({hc})")
    entry = [rest for ins, rest in runtime if ins == "ENTRYPOINT"]
    check(bool(entry) and entry[-1].startswith("[") and "docker-entrypoint.sh" in entry[-1], f"exec-form ENTRYPOINT through the entry point script ({entry})")
    env = runtime_env(path)
    check(env.get("GLASSBOX_SERVER__HOST") == "0.0.0.0", "GLASSBOX_SERVER__HOST=0.0.0.0")
    check(env.get("GLASSBOX_MODEL__SOURCE", "").startswith("/models/"), f"model source under /models ({env.get('GLASSBOX_MODEL__SOURCE')})")
    expose = [rest for ins, rest in runtime if ins == "EXPOSE"]
    check(expose and expose[-1].split("/")[0] == env.get("GLASSBOX_SERVER__PORT"), f"EXPOSE matches GLASSBOX_SERVER__PORT ({expose}, {env.get('GLASSBOX_SERVER__PORT')})")
    check(re.search(r"^ARG BAKE_MODEL=", text, re.M) is not None, "BAKE_MODEL build argument")
    check("scripts/fetch-model.sh" in text, "model fetched with scripts/fetch-model.sh")
    check("--locked" in text, "cargo build --locked")
    copies = [rest for ins, rest in instructions(path) if ins == "COPY" and "--from" not in rest]
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    for c in copies:
        srcs = [w for w in c.split() if not w.startswith("--")][:-1]
        for s in srcs:
            check(os.path.exists(os.path.join(root, s)), f"COPY source {s} exists in the build context")


# --- compose ---------------------------------------------------------------------------------


def load_yaml(path, many=False):
    import yaml

    with open(path) as f:
        return list(yaml.safe_load_all(f)) if many else yaml.safe_load(f)


def duration_s(value):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(value))
    if not m or not any(m.groups()):
        return None
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


def cmd_compose(path):
    print(f"compose checks: {path}")
    doc = load_yaml(path)
    base = os.path.dirname(os.path.abspath(path))
    services = doc.get("services", {})
    check({"glassbox", "gateway", "prometheus"} <= set(services), f"services glassbox, gateway, prometheus ({sorted(services)})")
    g = services.get("glassbox", {})
    replicas = g.get("deploy", {}).get("replicas", 1)
    check(isinstance(replicas, int) and replicas >= 2, f"glassbox has 2+ replicas (deploy.replicas={replicas})")
    check("ports" not in g, "replicas publish no host ports (only the gateway does)")
    check(g.get("build", {}).get("dockerfile") == "docker/Dockerfile", "glassbox builds docker/Dockerfile")
    ctx = os.path.normpath(os.path.join(base, g.get("build", {}).get("context", ".")))
    check(os.path.isfile(os.path.join(ctx, "Cargo.toml")), f"build context is the repository root ({ctx})")
    hc = g.get("healthcheck", {}).get("test", [])
    check(any("healthcheck.sh" in str(t) for t in hc), f"glassbox health check uses healthcheck.sh ({hc})")
    grace = duration_s(g.get("stop_grace_period", "10s"))
    env = g.get("environment", {})
    drain_ms = int(env.get("GLASSBOX_SERVER__SHUTDOWN_GRACE_MS", 10000))
    check(grace is not None and grace * 1000 > drain_ms, f"stop_grace_period ({grace}s) exceeds the service's drain ({drain_ms} ms)")
    check(g.get("stop_signal", "SIGTERM") == "SIGTERM", "stop signal SIGTERM")
    gw = services.get("gateway", {})
    check(bool(gw.get("ports")), f"gateway publishes a port ({gw.get('ports')})")
    dep = gw.get("depends_on", {})
    check(isinstance(dep, dict) and dep.get("glassbox", {}).get("condition") == "service_healthy", "gateway waits for healthy replicas")
    for vol in gw.get("volumes", []) + services.get("prometheus", {}).get("volumes", []):
        src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source")
        if src.startswith("."):
            check(os.path.exists(os.path.join(base, src)), f"mounted file {src} exists")
    prom = services.get("prometheus", {})
    check("monitoring" in prom.get("profiles", []), "prometheus only in the 'monitoring' profile")


# --- settings named in files -----------------------------------------------------------------


def cmd_settings(default_toml, files):
    """Names set outside comments must be real settings; planned ones may appear in comments."""
    print(f"settings named in {len(files)} files exist in {default_toml}")
    if tomllib is None:
        print("  (tomllib missing: Python 3.11+ needed; skipped)")
        return
    with open(default_toml, "rb") as f:
        cfg = tomllib.load(f)
    known = {f"GLASSBOX_{sec.upper()}__{key.upper()}" for sec, body in cfg.items() for key in body if not isinstance(body[key], (dict, list))}
    pattern = r"GLASSBOX_[A-Z0-9_]+__[A-Z0-9_]+"
    for path in files:
        code = "".join(re.sub(r"(^|\s)#.*", "", line) for line in open(path))
        used = sorted(set(re.findall(pattern, code)))
        mentioned = sorted(set(re.findall(pattern, open(path).read())) - set(used))
        unknown = [n for n in used if n not in known]
        planned = [n for n in mentioned if n not in known]
        check(not unknown, f"{os.path.relpath(path)}: sets {len(used)} settings, unknown: {unknown or 'none'}" + (f" (planned, in comments only: {planned})" if planned else ""))


# --- Kubernetes cross-checks -----------------------------------------------------------------


def cmd_k8s(directory):
    print(f"Kubernetes cross-checks: {directory}")
    docs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        for d in load_yaml(path, many=True):
            if d and d.get("kind") and d.get("apiVersion", "").split("/")[0] != "kustomize.config.k8s.io":
                docs.append(d)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"):
        check(kind in by_kind, f"a {kind}")
    if FAILURES:
        return
    dep = by_kind["Deployment"][0]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()), "Deployment selector matches its pod labels")
    c = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    cm = by_kind["ConfigMap"][0]
    cm_port = cm["data"].get("GLASSBOX_SERVER__PORT")
    check(cm_port is not None and int(cm_port) == ports.get("http"), f"ConfigMap port {cm_port} = containerPort http {ports.get('http')}")
    check(cm["data"].get("GLASSBOX_SERVER__HOST") == "0.0.0.0", "ConfigMap listens on 0.0.0.0")
    ref_cms = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    check(cm["metadata"]["name"] in ref_cms, "the container takes the ConfigMap as env")
    secret = by_kind["Secret"][0]
    secret_refs = [v["secret"]["secretName"] for v in pod["spec"].get("volumes", []) if "secret" in v]
    check(secret["metadata"]["name"] in secret_refs, "the Secret is mounted (as a file) by the pod")
    probes = {k: c.get(k, {}) for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    check(probes["readinessProbe"].get("httpGet", {}).get("path") == "/ready", "readiness probe on /ready")
    check(probes["livenessProbe"].get("httpGet", {}).get("path") == "/health", "liveness probe on /health")
    check(bool(probes["startupProbe"].get("httpGet")), "a startup probe")
    check(all(p.get("httpGet", {}).get("port") in ("http", ports.get("http")) for p in probes.values()), "probes target the http port")
    drain_ms = int(cm["data"].get("GLASSBOX_SERVER__SHUTDOWN_GRACE_MS", 10000))
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    pre_s = pre_stop.get("sleep", {}).get("seconds", 0)
    cmd = pre_stop.get("exec", {}).get("command", [])
    if len(cmd) == 2 and cmd[0] == "sleep":
        pre_s = int(cmd[1])
    tgps = pod["spec"].get("terminationGracePeriodSeconds", 30)
    check(tgps > pre_s + drain_ms / 1000, f"terminationGracePeriodSeconds {tgps} > preStop {pre_s}s + drain {drain_ms / 1000}s")
    res = c.get("resources", {})
    check({"cpu", "memory"} <= set(res.get("requests", {})) and "memory" in res.get("limits", {}), f"requests cpu+memory and a memory limit ({res})")
    threads = int(cm["data"].get("GLASSBOX_MODEL__INTRA_OP_THREADS", 0))
    cpu_req = res.get("requests", {}).get("cpu", "0")
    cpu_req = float(cpu_req[:-1]) / 1000 if str(cpu_req).endswith("m") else float(cpu_req)
    check(threads >= 1 and threads <= max(1, round(cpu_req * 2)), f"intra_op_threads {threads} fits the CPU request {cpu_req}")
    check(pod["spec"].get("enableServiceLinks") is False, "enableServiceLinks: false (no injected GLASSBOX_* service variables)")
    sc = {**pod["spec"].get("securityContext", {}), **c.get("securityContext", {})}
    check(sc.get("runAsNonRoot") is True and sc.get("allowPrivilegeEscalation") is False, "non-root, no privilege escalation")
    svc = by_kind["Service"][0]
    check(set(svc["spec"]["selector"].items()) <= set(labels.items()), "Service selects the pods")
    check(all(p.get("targetPort") in ("http", ports.get("http")) for p in svc["spec"]["ports"]), "Service targets the http port")
    hpa = by_kind["HorizontalPodAutoscaler"][0]
    check(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "HPA scales the Deployment")
    check(any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"]["metrics"]), "HPA on CPU")
    check(hpa["spec"]["minReplicas"] >= 2, "HPA keeps 2+ replicas")
    pdb = by_kind["PodDisruptionBudget"][0]
    check(set(pdb["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()), "PDB selects the pods")
    check(pdb["spec"].get("maxUnavailable") is not None or pdb["spec"].get("minAvailable") is not None, "PDB sets a budget")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "env":
        cmd_env(rest[0])
        return
    {
        "dockerfile": lambda: cmd_dockerfile(rest[0]),
        "compose": lambda: cmd_compose(rest[0]),
        "settings": lambda: cmd_settings(rest[0], rest[1:]),
        "k8s": lambda: cmd_k8s(rest[0]),
    }[cmd]()
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
