#!/usr/bin/env python3
"""Static checks of carousel's deployment files; run by deploy/check.sh from the repository root.

    check_manifests.py kubernetes            YAML of deploy/kubernetes + cross-references
    check_manifests.py configs               the TOML configs and their agreement with the units
    check_manifests.py dashboard OUT_RULES   Grafana JSON; writes its queries as a rules file
                                             for `promtool check rules` (PromQL syntax)
    check_manifests.py metrics               every carousel_* name used is a documented metric
    check_manifests.py alert-tests           every alert has tests firing and not firing
    check_manifests.py docker                Dockerfile references + its HEALTHCHECK, for real
    check_manifests.py configmap-toml OUT    writes the ConfigMap's carousel.toml to OUT
    check_manifests.py systemd-toml-examples OUT
                                             writes deploy/systemd/carousel.toml to OUT with its
                                             commented [responder] example uncommented
    check_manifests.py live BIN PROMTOOL DIR runs BIN on loopback: the DNS responder, admin
                                             endpoints, /metrics, HEALTHCHECK, graceful
                                             upgrade, SIGTERM

Each prints what it checked and exits 1 with one line per problem. Needs PyYAML (Debian
python3-yaml) and Python 3.11+ (tomllib), both in Debian 12.
"""

import hashlib
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path("deploy")
K8S = DEPLOY / "kubernetes"
PROBLEMS: list[str] = []

# The metric names carousel exports (the contract the alerts and the dashboard are written
# against). Histograms also export _bucket, _sum and _count. `live` checks this set against the
# binary's /metrics both ways: it runs carousel with a cluster and the DNS responder and asks the
# responder first, so the families whose series only appear once labelled (a cluster, an answer)
# are there too.
COUNTERS_GAUGES = {
    "carousel_build_info",
    "carousel_requests_total",
    "carousel_connect_attempts_total",
    "carousel_failovers_total",
    "carousel_member_up",
    "carousel_member_ejected",
    "carousel_member_ejections_total",
    "carousel_member_active_connections",
    "carousel_cluster_members",
    "carousel_panic_requests_total",
    "carousel_health_checks_total",
    "carousel_dns_lookups_total",
    "carousel_dns_stale_answers_total",
    "carousel_cluster_dns_stale",
    "carousel_dns_names",
    "carousel_dns_names_evicted_total",
    "carousel_dns_refreshes_total",
    "carousel_dns_lookups_in_flight",
    "carousel_dns_queries_total",
    "carousel_dns_all_down_answers_total",
    "carousel_dns_rate_limited_total",
    "carousel_tunnels_closed_member_down_total",
    "carousel_proxy_protocol_rejected_total",
    "carousel_listener_connections",
    "carousel_active_tunnels",
    "carousel_tunnel_bytes_total",
    "carousel_tunnel_pipes",
    "carousel_tunnel_pipe_budget_exhausted_total",
    "carousel_config_reloads_total",
    "carousel_config_last_reload_success_timestamp_seconds",
    "carousel_auth_failures_total",
    "carousel_auth_throttled_total",
    "carousel_auth_total",
    "carousel_directory_lookups_total",
    "carousel_overload_rejections_total",
    "carousel_dial_watched_attempts_total",
    "carousel_access_log_dropped_total",
    "carousel_dial_watch_full_total",
    "carousel_dns_send_dropped_total",
    "carousel_dns_tcp_refused_total",
    "carousel_fd_share",
    "carousel_fd_share_used",
    "carousel_fd_share_exhausted_total",
}
HISTOGRAMS = {
    "carousel_connect_duration_seconds",
    "carousel_dns_lookup_duration_seconds",
    "carousel_dns_answer_records",
}
KNOWN_METRICS = COUNTERS_GAUGES | HISTOGRAMS | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}


def problem(msg: str) -> None:
    PROBLEMS.append(msg)


def finish(what: str) -> None:
    if PROBLEMS:
        for p in PROBLEMS:
            print(f"  {what}: {p}")
        sys.exit(1)
    print(f"  {what}: ok")


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def load_yaml_docs(path: Path) -> list:
    try:
        with path.open() as f:
            return [d for d in yaml.load_all(f, Loader=UniqueKeyLoader) if d is not None]
    except yaml.YAMLError as e:
        problem(f"{path}: YAML error: {e}")
        return []


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(f"{where}: TOML error: {e}")
        return {}


# ---------------------------------------------------------------- kubernetes


def k8s_objects() -> dict[tuple[str, str], tuple[Path, dict]]:
    objects: dict[tuple[str, str], tuple[Path, dict]] = {}
    files = sorted(list(K8S.rglob("*.yaml")) + list(K8S.rglob("*.yml")))
    if not files:
        problem(f"no YAML files under {K8S}")
    for path in files:
        docs = load_yaml_docs(path)
        if not docs:
            problem(f"{path}: no YAML document")
        for i, doc in enumerate(docs):
            where = f"{path} (document {i + 1})"
            if not isinstance(doc, dict):
                problem(f"{where}: not a mapping")
                continue
            for key in ("apiVersion", "kind"):
                if not isinstance(doc.get(key), str) or not doc[key]:
                    problem(f"{where}: missing {key}")
            name = (doc.get("metadata") or {}).get("name")
            if not isinstance(name, str) or not name:
                problem(f"{where}: missing metadata.name")
                continue
            if "namespace" in doc["metadata"]:
                problem(f"{where}: metadata.namespace set; the manifests are namespace-agnostic")
            key = (doc.get("kind", ""), name)
            if key in objects:
                problem(f"{where}: {key[0]}/{key[1]} defined twice")
            objects[key] = (path, doc)
    return objects


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_kubernetes() -> None:
    objects = k8s_objects()
    get = lambda kind, name: objects.get((kind, name), (None, None))[1]  # noqa: E731

    kust = get("Kustomization", "carousel")
    if kust is None:
        problem("kustomization.yaml: no Kustomization named carousel")
    else:
        listed = kust.get("resources") or []
        for res in listed:
            if not (K8S / res).is_file():
                problem(f"kustomization.yaml: resource {res} does not exist")
        if len(set(listed)) != len(listed):
            problem("kustomization.yaml: a resource is listed twice")
        for path in {p for p, _ in objects.values()}:
            if path.name != "kustomization.yaml" and str(path.relative_to(K8S)) not in listed:
                problem(f"kustomization.yaml: {path.name} is not listed in resources")

    cm = get("ConfigMap", "carousel-config")
    dep = get("Deployment", "carousel")
    svc = get("Service", "carousel")
    if cm is None or dep is None or svc is None:
        problem("expected ConfigMap/carousel-config, Deployment/carousel and Service/carousel")
        return

    toml_text = (cm.get("data") or {}).get("carousel.toml")
    if not isinstance(toml_text, str):
        problem("ConfigMap carousel-config has no data.carousel.toml")
        return
    conf = parse_toml(toml_text, "ConfigMap carousel.toml")

    spec = dep["spec"]
    tmpl = spec["template"]
    pod_labels = tmpl["metadata"].get("labels") or {}
    if not labels_match(spec["selector"].get("matchLabels"), pod_labels):
        problem("Deployment selector does not match its pod template labels")
    if spec.get("replicas", 1) < 2:
        problem("Deployment: fewer than 2 replicas")

    checksum = (tmpl["metadata"].get("annotations") or {}).get("checksum/config")
    want = sha256(toml_text)
    if checksum != want:
        problem(
            "deployment.yaml: pod annotation checksum/config is stale; set it to "
            f'"{want}" (sha256 of configmap.yaml data["carousel.toml"])'
        )

    pod = tmpl["spec"]
    containers = pod.get("containers") or []
    if len(containers) != 1:
        problem("Deployment: expected exactly one container")
        return
    c = containers[0]
    cports = c.get("ports") or []
    port_names = {p["name"]: p["containerPort"] for p in cports}
    port_protocols = {p["name"]: p.get("protocol", "TCP") for p in cports}
    wanted_ports = [("http-proxy", 3128, "TCP"), ("socks", 1080, "TCP"), ("metrics", 9090, "TCP")]
    # The DNS responder: UDP and TCP on each address, as container ports dns-udp and dns-tcp.
    responder = conf.get("responder") or {}
    dns_listen = responder.get("listen") or []
    dns_ports = {int(a.rsplit(":", 1)[1]) for a in dns_listen}
    for a in dns_listen:
        if not a.startswith("0.0.0.0:") and not a.startswith("[::]:"):
            problem(f"ConfigMap responder.listen {a} is not reachable from other pods")
    if len(dns_ports) > 1:
        problem(f"ConfigMap responder.listen uses ports {sorted(dns_ports)}; the manifests expect one")
    if dns_ports:
        dns_port = min(dns_ports)
        wanted_ports += [("dns-udp", dns_port, "UDP"), ("dns-tcp", dns_port, "TCP")]
        if not responder.get("allow_clients") and not (conf.get("access") or {}).get("allow_clients"):
            problem("ConfigMap [responder] has no allow_clients (nor [access] allow_clients)")
    for want_name, want_port, want_proto in wanted_ports:
        if port_names.get(want_name) != want_port or port_protocols.get(want_name) != want_proto:
            problem(f"container port {want_name} should be {want_port}/{want_proto}")
    if not dns_ports and {"dns-udp", "dns-tcp"} & set(port_names):
        problem("container ports dns-udp/dns-tcp without a [responder] listen in the ConfigMap")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get_ = (c.get(probe) or {}).get("httpGet") or {}
        if get_.get("path") != path or get_.get("port") not in ("metrics", 9090):
            problem(f"{probe} should be httpGet {path} on the metrics port")
    psc = pod.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        problem("runAsNonRoot is not set")
    if not csc.get("readOnlyRootFilesystem"):
        problem("readOnlyRootFilesystem is not set")
    if csc.get("allowPrivilegeEscalation") is not False:
        problem("allowPrivilegeEscalation should be false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        problem("capabilities.drop should contain ALL")
    # A non-root container cannot use added capabilities: Kubernetes has no ambient set, so they
    # are gone once the runtime execs carousel (kubernetes/kubernetes#56374). Ports below 1024
    # need the pod sysctl net.ipv4.ip_unprivileged_port_start instead, or a higher pod port.
    added = (csc.get("capabilities") or {}).get("add") or []
    if added:
        problem(f"capabilities.add {added}: a non-root container loses them at exec; use ports above 1024")
    sysctls = {x.get("name"): x.get("value") for x in psc.get("sysctls") or []}
    unprivileged_from = int(sysctls.get("net.ipv4.ip_unprivileged_port_start", 1024))
    for p in cports:
        if p["containerPort"] < unprivileged_from:
            problem(
                f"container port {p['name']} ({p['containerPort']}) is below {unprivileged_from}: "
                "a non-root container cannot bind it (map it in the Service instead)"
            )
    if psc.get("runAsUser") != docker_uid():
        problem(f"pod runAsUser {psc.get('runAsUser')} differs from the Dockerfile's USER {docker_uid()}")

    # Volumes: the config mount and a writable /run/carousel for pid file and upgrade socket.
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    cfg_vol = volumes.get(mounts.get("/etc/carousel", ""), {})
    if (cfg_vol.get("configMap") or {}).get("name") != "carousel-config":
        problem("/etc/carousel is not mounted from ConfigMap carousel-config")
    args = c.get("args") or []
    if "/etc/carousel/carousel.toml" not in args:
        problem("container args do not point at /etc/carousel/carousel.toml")
    server = conf.get("server") or {}
    for key in ("pid_file", "upgrade_sock"):
        value = server.get(key, "")
        if not any(value.startswith(m.rstrip("/") + "/") for m in mounts if m != "/etc/carousel"):
            problem(f"ConfigMap server.{key} = {value!r} is not on a writable volume")

    # Shutdown budget: preStop sleep + Pingora grace + in-flight drain must fit.
    pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    pre_sleep = int(pre[-1]) if pre and pre[0].endswith("sleep") else 0
    if not pre_sleep:
        problem("no preStop sleep")
    budget = pre_sleep + server.get("grace_period_seconds", 5) + server.get(
        "graceful_shutdown_timeout_seconds", 5
    )
    if pod.get("terminationGracePeriodSeconds", 30) <= budget:
        problem(
            f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)} must exceed "
            f"preStop + grace_period_seconds + graceful_shutdown_timeout_seconds = {budget}"
        )
    if not (c.get("resources") or {}).get("requests", {}).get("cpu"):
        problem("no cpu request (the HPA's utilization needs one)")

    # The config listens where the pod's ports are.
    listen_ports = {int(l["address"].rsplit(":", 1)[1]) for l in conf.get("listener") or []}
    for l in conf.get("listener") or []:
        if not l["address"].startswith("0.0.0.0:") and not l["address"].startswith("[::]:"):
            problem(f"ConfigMap listener {l['address']} is not reachable from other pods")
    if listen_ports != {3128, 1080}:
        problem(f"ConfigMap listeners use ports {sorted(listen_ports)}, expected 3128 and 1080")
    admin = (conf.get("admin") or {}).get("address", "")
    if admin != "0.0.0.0:9090":
        problem(f"ConfigMap admin.address is {admin!r}, expected 0.0.0.0:9090 (probes, metrics)")
    if not (conf.get("access") or {}).get("allow_clients"):
        problem("ConfigMap has no [access] allow_clients")
    if "0.0.0.0/0" in (conf.get("access") or {}).get("allow_clients", []):
        problem("ConfigMap allows 0.0.0.0/0: an open proxy")

    # Service -> pods, ServiceMonitor -> Service, PDB and HPA -> Deployment.
    if not labels_match(svc["spec"].get("selector"), pod_labels):
        problem("Service selector does not match the pods")
    svc_ports = {p["name"]: p for p in svc["spec"].get("ports") or []}
    for name, p in svc_ports.items():
        target, proto = p.get("targetPort"), p.get("protocol", "TCP")
        matching = [
            cp for cp in cports
            if target in (cp["name"], cp["containerPort"]) and cp.get("protocol", "TCP") == proto
        ]
        if not matching:
            problem(f"Service port {name} targets {target!r}/{proto}, not a container port")
    want_svc = {(3128, "TCP"), (1080, "TCP"), (9090, "TCP")}
    if dns_ports:
        want_svc |= {(53, "UDP"), (53, "TCP")}
    have_svc = {(p["port"], p.get("protocol", "TCP")) for p in svc_ports.values()}
    if have_svc != want_svc:
        problem(f"Service should expose {sorted(want_svc)}, exposes {sorted(have_svc)}")
    for name, proto in (("dns-udp", "UDP"), ("dns-tcp", "TCP")):
        if dns_ports and (svc_ports.get(name) or {}).get("protocol") != proto:
            problem(f"Service port {name} should be 53/{proto}")
    sm = get("ServiceMonitor", "carousel")
    if sm is None:
        problem("no ServiceMonitor/carousel")
    else:
        if not labels_match(sm["spec"]["selector"].get("matchLabels"), svc["metadata"].get("labels") or {}):
            problem("ServiceMonitor selector does not match Service carousel's labels")
        for ep in sm["spec"].get("endpoints") or []:
            if ep.get("port") not in svc_ports:
                problem(f"ServiceMonitor endpoint port {ep.get('port')!r} is not a Service port name")
            if ep.get("path") != "/metrics" or ep.get("interval") != "15s":
                problem("ServiceMonitor endpoint should scrape /metrics every 15s")
    pdb = get("PodDisruptionBudget", "carousel")
    if pdb is None or not labels_match(pdb["spec"]["selector"].get("matchLabels"), pod_labels):
        problem("PodDisruptionBudget carousel missing or not selecting the pods")
    elif pdb["spec"].get("minAvailable") != 1:
        problem("PodDisruptionBudget should have minAvailable: 1")
    hpa = get("HorizontalPodAutoscaler", "carousel")
    if hpa is None:
        problem("no HorizontalPodAutoscaler/carousel")
    else:
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref.get("kind"), ref.get("name")) != ("Deployment", "carousel"):
            problem("HPA does not target Deployment/carousel")
        if hpa["spec"].get("minReplicas", 1) < 2:
            problem("HPA minReplicas < 2 would let the PDB block every drain")
    print(f"  checked {len(objects)} objects in {K8S}")


# ---------------------------------------------------------------- configs and units


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(s|sec|min|m)?", value)
    if not m:
        raise ValueError(value)
    return int(m.group(1)) * (60 if m.group(2) in ("min", "m") else 1)


def with_examples(text: str, headers=("[responder]",)) -> str:
    """`text` with the commented-out example tables named in `headers` uncommented: a line
    `# [table]` and the `# key = value` lines right after it."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("# ") and line[2:].strip() in headers:
            inside = True
        elif not re.match(r"# [a-z_]+ = ", line):
            inside = False
        out.append(line[2:] if inside else line)
    return "\n".join(out) + "\n"


SYSTEMD_TOML = DEPLOY / "systemd" / "carousel.toml"


def check_configs() -> None:
    unit_path = DEPLOY / "systemd" / "carousel.service"
    unit = unit_settings(unit_path)
    host = parse_toml((DEPLOY / "systemd" / "carousel.toml").read_text(), "deploy/systemd/carousel.toml")
    image = parse_toml((DEPLOY / "docker" / "carousel.toml").read_text(), "deploy/docker/carousel.toml")

    server = host.get("server") or {}
    pid_file = (unit.get("PIDFile") or [""])[-1]
    runtime = "/run/" + (unit.get("RuntimeDirectory") or [""])[-1]
    if server.get("pid_file") != pid_file:
        problem(f"deploy/systemd/carousel.toml server.pid_file {server.get('pid_file')!r} != unit PIDFile {pid_file!r}")
    for key in ("pid_file", "upgrade_sock"):
        if not str(server.get(key, "")).startswith(runtime + "/"):
            problem(f"deploy/systemd/carousel.toml server.{key} is not under the unit's RuntimeDirectory {runtime}")
    stop = seconds((unit.get("TimeoutStopSec") or ["90s"])[-1])
    need = server.get("grace_period_seconds", 5) + server.get("graceful_shutdown_timeout_seconds", 5) + 5
    if stop <= need:
        problem(f"unit TimeoutStopSec {stop:.0f}s must exceed grace + shutdown timeout + 5 s = {need}s")
    for key in ("ExecStart", "ExecStartPre"):
        if not any("${CAROUSEL_CONFIG}" in v for v in unit.get(key, [])):
            problem(f"unit {key} does not use ${{CAROUSEL_CONFIG}}")
    if "/bin/kill -HUP $MAINPID" not in unit.get("ExecReload", []):
        problem("unit ExecReload does not send SIGHUP")
    if unit.get("Type") != ["simple"]:
        problem("unit Type should be simple")

    # The [responder] example (commented out in the file) must parse and fit the unit: port 53
    # needs CAP_NET_BIND_SERVICE in the ambient and bounding sets, outside a user namespace.
    example = parse_toml(with_examples(SYSTEMD_TOML.read_text()), "deploy/systemd/carousel.toml [responder] example")
    listen = (example.get("responder") or {}).get("listen") or []
    if not listen:
        problem("deploy/systemd/carousel.toml: no commented [responder] example with a listen address")
    low = [a for a in listen if int(a.rsplit(":", 1)[1]) < 1024]
    for key in ("AmbientCapabilities", "CapabilityBoundingSet"):
        caps = " ".join(unit.get(key) or []).split()
        if low and "CAP_NET_BIND_SERVICE" not in caps:
            problem(f"the [responder] example listens on {low[0]}, but the unit's {key} lacks CAP_NET_BIND_SERVICE")
        if set(caps) - {"CAP_NET_BIND_SERVICE"}:
            problem(f"unit {key} grants more than CAP_NET_BIND_SERVICE: {caps}")
    if low and (unit.get("PrivateUsers") or ["no"])[-1] in ("yes", "true", "1", "self", "identity"):
        problem("unit PrivateUsers= would keep CAP_NET_BIND_SERVICE from covering the host's port 53")
    if low and any(a.startswith(("0.0.0.0:", "[::]:")) for a in low):
        problem("the [responder] example should bind the host's address, not a wildcard (stub resolvers hold 127.0.0.53:53)")

    for name, conf in (("deploy/systemd/carousel.toml", host), ("deploy/docker/carousel.toml", image)):
        allow = (conf.get("access") or {}).get("allow_clients") or []
        if not allow or "0.0.0.0/0" in allow or "::/0" in allow:
            problem(f"{name}: [access] allow_clients must be a non-empty list without 0.0.0.0/0")
        if not (conf.get("admin") or {}).get("address", "").endswith(":9090"):
            problem(f"{name}: admin listener should be on port 9090")
    img_server = image.get("server") or {}
    for key in ("pid_file", "upgrade_sock"):
        if not str(img_server.get(key, "")).startswith("/run/carousel/"):
            problem(f"deploy/docker/carousel.toml server.{key} should be under /run/carousel (writable in the image)")


# ---------------------------------------------------------------- dashboard


GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$cluster": ".*",
}


def check_dashboard(out_rules: str) -> None:
    path = DEPLOY / "grafana" / "carousel-dashboard.json"
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        problem(f"{path}: JSON error: {e}")
        return
    if not 36 <= dash.get("schemaVersion", 0) <= 41:
        problem(f"schemaVersion {dash.get('schemaVersion')} (expected about 39)")
    if not dash.get("uid") or not dash.get("title"):
        problem("dashboard needs a uid and a title")
    variables = {v["name"]: v for v in (dash.get("templating") or {}).get("list", [])}
    ds = variables.get("datasource") or {}
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problem("no `datasource` variable of type datasource/prometheus")
    cl = variables.get("cluster") or {}
    cl_query = cl.get("query")
    cl_query = cl_query.get("query") if isinstance(cl_query, dict) else cl_query
    if cl_query != "label_values(carousel_member_up, cluster)":
        problem("no `cluster` variable from label_values(carousel_member_up, cluster)")

    exprs = []
    ids = set()

    def walk(panels):
        for p in panels:
            if p.get("id") in ids:
                problem(f"duplicate panel id {p.get('id')}")
            ids.add(p.get("id"))
            gp = p.get("gridPos") or {}
            if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")) or gp["x"] + gp["w"] > 24:
                problem(f"panel {p.get('title')!r}: bad gridPos {gp}")
            if p.get("type") == "row":
                walk(p.get("panels") or [])
                continue
            if (p.get("datasource") or {}).get("uid") != "${datasource}":
                problem(f"panel {p.get('title')!r} does not use ${{datasource}}")
            if not p.get("targets"):
                problem(f"panel {p.get('title')!r} has no query")
            for t in p.get("targets") or []:
                if not t.get("expr"):
                    problem(f"panel {p.get('title')!r}: empty query {t.get('refId')}")
                    continue
                exprs.append((p.get("title"), t["expr"]))

    walk(dash.get("panels") or [])
    wanted = [
        "carousel_requests_total", "carousel_connect_attempts_total", "carousel_failovers_total",
        "carousel_member_up", "carousel_member_ejections_total", "carousel_panic_requests_total",
        "carousel_dns_lookups_total", "carousel_cluster_dns_stale", "carousel_active_tunnels",
        "carousel_tunnel_bytes_total", "carousel_connect_duration_seconds_bucket",
        "carousel_config_reloads_total", "carousel_auth_throttled_total",
        "carousel_tunnels_closed_member_down_total", "carousel_dns_names",
        "carousel_dns_refreshes_total", "carousel_dns_lookups_in_flight",
        "carousel_dns_queries_total", "carousel_dns_answer_records_bucket",
        "carousel_dns_all_down_answers_total", "carousel_dns_rate_limited_total",
    ]
    all_exprs = " ".join(e for _, e in exprs)
    for m in wanted:
        if m not in all_exprs:
            problem(f"no panel queries {m}")

    # Every query as a recording rule, so promtool parses the PromQL.
    rules = []
    for i, (title, expr) in enumerate(exprs):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        if "$" in expr:
            problem(f"panel {title!r}: unknown variable in {expr!r}")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    Path(out_rules).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    print(f"  {len(ids)} panels, {len(exprs)} queries (written to {out_rules} for promtool)")


# ---------------------------------------------------------------- metric names


def check_metrics() -> None:
    sources = [
        DEPLOY / "prometheus" / "carousel-alerts.yml",
        DEPLOY / "prometheus" / "carousel-alerts.test.yml",
        DEPLOY / "grafana" / "carousel-dashboard.json",
    ]
    used = set()
    for path in sources:
        for name in re.findall(r"\bcarousel_[a-z0-9_]+", path.read_text()):
            used.add(name)
            if name not in KNOWN_METRICS:
                problem(f"{path}: unknown metric {name}")
    print(f"  {len(used)} distinct carousel_* metrics used, all in the documented set")


def check_alert_tests() -> None:
    """Every alert in carousel-alerts.yml has a unit test that expects it firing and one that
    expects it not firing."""
    rules = load_yaml_docs(DEPLOY / "prometheus" / "carousel-alerts.yml")
    tests = load_yaml_docs(DEPLOY / "prometheus" / "carousel-alerts.test.yml")
    alerts = [r["alert"] for d in rules for g in d.get("groups", []) for r in g.get("rules", []) if "alert" in r]
    firing, quiet = set(), set()
    for d in tests:
        for t in d.get("tests") or []:
            for a in t.get("alert_rule_test") or []:
                (firing if a.get("exp_alerts") else quiet).add(a.get("alertname"))
    for name in alerts:
        if name not in firing:
            problem(f"no test expects {name} to fire")
        if name not in quiet:
            problem(f"no test expects {name} not to fire")
    for name in (firing | quiet) - set(alerts):
        problem(f"the tests name {name}, which is no alert")
    print(f"  {len(alerts)} alerts, each tested firing and not firing")


# ---------------------------------------------------------------- docker


def docker_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def docker_uid() -> int | None:
    for word, rest in docker_instructions():
        if word == "USER":
            try:
                return int(rest.split(":")[0])
            except ValueError:
                return None
    return None


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def check_docker() -> None:
    instr = docker_instructions()
    words = [w for w, _ in instr]
    if words.count("FROM") < 2:
        problem("Dockerfile should be multi-stage (builder + runtime)")
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    for word, rest in instr:
        if word == "COPY" and "--from=" not in rest:
            args = [a for a in rest.split() if not a.startswith("--")]
            for src in args[:-1]:
                if src != "." and not Path(src).exists():
                    problem(f"COPY source {src} does not exist (paths are relative to the repo root)")
                if src.startswith("deploy/") and f"!{src}" not in ignore:
                    problem(f"COPY source {src} is excluded by Dockerfile.dockerignore (add !{src})")
        if word == "RUN" and "cargo build" in rest and "--locked" not in rest:
            problem("cargo build without --locked")
        if word == "EXPOSE" and set(rest.split()) != {"3128", "1080", "9090"}:
            problem(f"EXPOSE {rest}: expected 3128 1080 9090")
    uid = docker_uid()
    if not uid:
        problem("runtime USER must be a numeric non-root uid")

    # Run the HEALTHCHECK command itself against a local HTTP server on a free loopback port.
    health = [rest for w, rest in instr if w == "HEALTHCHECK"]
    if len(health) != 1 or " CMD " not in f" {health[0]} ":
        problem("expected one HEALTHCHECK ... CMD")
        return
    cmd = json.loads(health[0].split(" CMD ", 1)[1])
    script = cmd[-1]
    if "127.0.0.1/9090" not in script or "/healthz" not in script:
        problem("HEALTHCHECK should ask 127.0.0.1:9090/healthz")
        return
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def run(s: str) -> int:
            return subprocess.run(["bash", "-c", s], capture_output=True, timeout=10).returncode

        ok = run(script.replace("127.0.0.1/9090", f"127.0.0.1/{port}"))
        not_found = run(script.replace("127.0.0.1/9090", f"127.0.0.1/{port}").replace("/healthz", "/nope"))
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        refused = run(script.replace("127.0.0.1/9090", f"127.0.0.1/{closed_port}"))
    finally:
        server.shutdown()
    if ok != 0:
        problem(f"HEALTHCHECK command failed against a healthy server (exit {ok})")
    if not_found == 0 or refused == 0:
        problem("HEALTHCHECK command passes on a 404 or a refused connection")
    print("  HEALTHCHECK: exit 0 on 200, non-zero on 404 and on a refused connection")


# ---------------------------------------------------------------- live (needs a carousel binary)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _wait(pred, seconds: float) -> bool:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def _free_udp_tcp_port() -> int:
    """A loopback port free for both UDP and TCP (the DNS responder binds both)."""
    while True:
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _dns_query(port: int, name: str, qtype: int = 1, tcp: bool = False) -> dict | None:
    """One DNS query to 127.0.0.1:port; the answer's flags, rcode and records, or None."""
    import random
    import struct

    qid = random.randrange(1 << 16)
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    msg = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", qtype, 1)
    try:
        if tcp:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                c.sendall(struct.pack(">H", len(msg)) + msg)
                data = b""
                while len(data) < 2 or len(data) < 2 + struct.unpack(">H", data[:2])[0]:
                    chunk = c.recv(4096)
                    if not chunk:
                        return None
                    data += chunk
                r = data[2:]
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(1)
                u.sendto(msg, ("127.0.0.1", port))
                r = u.recv(4096)
    except OSError:
        return None

    def skip_name(i: int) -> int:
        while r[i]:
            if r[i] & 0xC0 == 0xC0:
                return i + 2
            i += r[i] + 1
        return i + 1

    try:
        rid, flags, qd, an = struct.unpack(">HHHH", r[:8])
        if rid != qid:
            return None
        i = 12
        for _ in range(qd):
            i = skip_name(i) + 4
        records = []
        for _ in range(an):
            i = skip_name(i)
            rtype, _cls, ttl, rdlen = struct.unpack(">HHIH", r[i:i + 10])
            rdata = r[i + 10:i + 10 + rdlen]
            records.append((rtype, ttl, socket.inet_ntoa(rdata) if rtype == 1 and rdlen == 4 else rdata))
            i += 10 + rdlen
    except (struct.error, IndexError):
        return {"rcode": None, "malformed": r.hex()}
    return {"rcode": flags & 0xF, "aa": bool(flags & 0x0400), "ra": bool(flags & 0x0080), "answers": records}


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) still "exists".
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def check_live(carousel_bin: str, promtool: str, workdir: str) -> None:
    """Runs the real binary on loopback ports: admin endpoints, /metrics against the documented
    names (and promtool's linter), the image's HEALTHCHECK, a graceful upgrade through
    carousel-upgrade.sh --in-unit while a client keeps connecting, and SIGTERM."""
    import os
    import signal
    import time

    # Become a child subreaper, as systemd is: the upgraded process, orphaned when the upgrade
    # script exits, is re-parented to us and reaped below instead of lingering as a zombie.
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    http_port, socks_port, admin_port, member_port, nameserver_port = _free_ports(5)
    dns_port = _free_udp_tcp_port()
    pid_file, sock = work / "carousel.pid", work / "upgrade.sock"
    config = work / "carousel.toml"
    # A cluster whose only member (a closed loopback port) fails its checks, and the DNS
    # responder: every metric family gets its labelled series, and the responder's all-down
    # answer can be checked. The nameserver is a closed port too: the cluster name's own lookup
    # fails at once instead of waiting on whatever resolver this machine has.
    cluster = "dead.carousel.test"
    config.write_text(
        f"""[server]
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1
pid_file = "{pid_file}"
upgrade_sock = "{sock}"
[[listener]]
address = "127.0.0.1:{http_port}"
protocols = ["http"]
[[listener]]
address = "127.0.0.1:{socks_port}"
protocols = ["socks"]
[admin]
address = "127.0.0.1:{admin_port}"
[dns]
nameservers = ["127.0.0.1:{nameserver_port}"]
timeout_ms = 200
attempts = 1
[responder]
listen = ["127.0.0.1:{dns_port}"]
allow_clients = ["127.0.0.0/8"]
[[cluster]]
name = "{cluster}"
ports = [{member_port}]
static_members = ["127.0.0.1"]
[cluster.health]
interval_ms = 200
timeout_ms = 100
rise = 1
fall = 1
"""
    )

    def all_down_answer() -> dict | None:
        a = _dns_query(dns_port, cluster)
        return a if a and a["rcode"] == 0 and a["answers"] and a["answers"][0][1] == 1 else None

    started: list[int] = []
    log = open(work / "carousel.log", "w")
    try:
        old = subprocess.Popen([carousel_bin, "run", "-c", str(config)], stdout=log, stderr=log)
        started.append(old.pid)
        if not _wait(lambda: _get(admin_port, "/readyz")[0] == 200, 15):
            problem(f"/readyz never answered 200 (log: {work / 'carousel.log'})")
            return
        for path in ("/healthz", "/status", "/proxy.pac", "/wpad.dat"):
            code, body = _get(admin_port, path)
            if code != 200:
                problem(f"GET {path}: {code}")
            elif path == "/status":
                try:
                    json.loads(body)
                except json.JSONDecodeError:
                    problem("/status is not JSON")
            elif path in ("/proxy.pac", "/wpad.dat") and "FindProxyForURL" not in body:
                problem(f"{path} is not a PAC file")
        # The DNS responder: authoritative, no recursion; the cluster name answers with its
        # member (every member with TTL 1 while none is usable), over UDP and TCP; other names
        # are REFUSED.
        answer = None
        if not _wait(lambda: all_down_answer() is not None, 15):
            problem(f"the responder never gave the all-down answer for {cluster}: {_dns_query(dns_port, cluster)}")
        else:
            answer = all_down_answer()
            if not answer["aa"] or answer["ra"] or [a[2] for a in answer["answers"]] != ["127.0.0.1"]:
                problem(f"responder answer for {cluster}: {answer} (want AA, no RA, 127.0.0.1)")
        tcp_answer = _dns_query(dns_port, cluster, tcp=True)
        if not tcp_answer or tcp_answer["rcode"] != 0 or not tcp_answer["answers"]:
            problem(f"responder over TCP: {tcp_answer}")
        other = _dns_query(dns_port, "example.com")
        if not other or other["rcode"] != 5:
            problem(f"responder answer for a name outside the clusters: {other} (want REFUSED)")
        if answer:
            print(f"  responder: {cluster} -> 127.0.0.1 TTL 1 (all down), AA, no RA, UDP and TCP; other names REFUSED")

        code, metrics = _get(admin_port, "/metrics")
        lint = subprocess.run([promtool, "check", "metrics"], input=metrics.encode(), capture_output=True)
        if code != 200 or lint.returncode != 0:
            problem(f"/metrics: {code}, promtool check metrics: {lint.stdout.decode()}{lint.stderr.decode()}")
        families = set(re.findall(r"^# TYPE (carousel_\w+) ", metrics, re.M))
        for name in sorted(families - COUNTERS_GAUGES - HISTOGRAMS):
            problem(f"/metrics exports {name}, unknown to deploy/ (add it to KNOWN_METRICS and, if useful, to the dashboard/alerts)")
        # And the other way: the dashboard and the alerts may only rely on what the binary has.
        for name in sorted((COUNTERS_GAUGES | HISTOGRAMS) - families):
            problem(f"/metrics lacks {name}, which deploy/ expects (KNOWN_METRICS)")
        for series in (f'carousel_dns_all_down_answers_total{{cluster="{cluster}"}}', 'carousel_dns_queries_total{qtype="A",rcode="REFUSED"}'):
            if series not in metrics:
                problem(f"/metrics has no {series} after the queries above")
        print(f"  admin endpoints ok; /metrics: {len(families)} carousel families, all of deploy/'s, promtool lint clean")

        # The image's HEALTHCHECK against the real admin listener.
        health = [rest for w, rest in docker_instructions() if w == "HEALTHCHECK"]
        script = json.loads(health[0].split(" CMD ", 1)[1])[-1].replace("127.0.0.1/9090", f"127.0.0.1/{admin_port}")
        if subprocess.run(["bash", "-c", script], capture_output=True, timeout=10).returncode != 0:
            problem("the Dockerfile HEALTHCHECK fails against the real admin listener")

        # Graceful upgrade while a client connects to the HTTP listener in a loop.
        refused, connects, stop = [0], [0], threading.Event()

        def hammer():
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", http_port), timeout=2):
                        connects[0] += 1
                except OSError:
                    refused[0] += 1
                time.sleep(0.02)

        t = threading.Thread(target=hammer, daemon=True)
        t.start()
        env = dict(os.environ, CAROUSEL_CONFIG=str(config))
        with open(work / "upgrade.log", "w") as out:
            up = subprocess.run(
                ["bash", "deploy/systemd/carousel-upgrade.sh", "--in-unit", str(old.pid), str(pid_file), carousel_bin],
                env=env, stdout=out, stderr=out, timeout=60,
            )
        new_pid = int(pid_file.read_text().strip()) if pid_file.exists() else 0
        if new_pid and new_pid != old.pid:
            started.append(new_pid)
        if up.returncode != 0 or not new_pid or new_pid == old.pid or not _alive(new_pid):
            problem(f"upgrade failed (exit {up.returncode}): {(work / 'upgrade.log').read_text()}")
            return
        # The old process drains (Pingora's fixed 5 s + 1 s here) and exits.
        try:
            old.wait(timeout=20)
        except subprocess.TimeoutExpired:
            problem("the old process did not exit within 20 s of the upgrade")
        time.sleep(0.5)
        stop.set()
        t.join()
        if refused[0]:
            problem(f"{refused[0]} of {refused[0] + connects[0]} client connects failed during the upgrade")
        if _get(admin_port, "/readyz")[0] != 200:
            problem("/readyz not 200 after the upgrade")
        # The old process is gone: the new one answers DNS on the same sockets' address.
        if not _wait(lambda: all_down_answer() is not None, 10):
            problem(f"the responder does not answer after the upgrade: {_dns_query(dns_port, cluster)}")
        print(f"  upgrade: {old.pid} -> {new_pid}, {connects[0]} client connects during it, none refused; DNS answered after it")

        # SIGTERM: grace 1 s (still accepting, /readyz 503 so load balancers move away), then
        # drain 1 s.
        os.kill(new_pid, signal.SIGTERM)
        draining = _wait(lambda: (_get(admin_port, "/readyz")[0], _get(admin_port, "/healthz")[0]) == (503, 200), 5)
        if not draining:
            problem("/readyz did not answer 503 (with /healthz 200) during the SIGTERM grace period")
        if not _wait(lambda: not _alive(new_pid), 15):
            problem("the upgraded process did not exit within 15 s of SIGTERM")
        else:
            print("  SIGTERM: /readyz 503 during the grace period, then exited")
    finally:
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        log.close()


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "kubernetes":
        check_kubernetes()
    elif what == "configs":
        check_configs()
    elif what == "dashboard" and len(sys.argv) == 3:
        check_dashboard(sys.argv[2])
    elif what == "metrics":
        check_metrics()
    elif what == "alert-tests":
        check_alert_tests()
    elif what == "docker":
        check_docker()
    elif what == "live" and len(sys.argv) == 5:
        check_live(sys.argv[2], sys.argv[3], sys.argv[4])
    elif what == "systemd-toml-examples" and len(sys.argv) == 3:
        Path(sys.argv[2]).write_text(with_examples(SYSTEMD_TOML.read_text()))
        return
    elif what == "configmap-toml" and len(sys.argv) == 3:
        for doc in load_yaml_docs(K8S / "configmap.yaml"):
            Path(sys.argv[2]).write_text(doc["data"]["carousel.toml"])
        return
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    finish(what)


if __name__ == "__main__":
    main()
