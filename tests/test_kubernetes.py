"""deploy/kubernetes/: every manifest validates against the Kubernetes schemas kubernetes-validate
bundles (strict: an unknown field fails), the kustomization lists them all, and what the manifests
tell journey (environment, ports, paths, the rule and dispatch files) is what journey reads. No
cluster, no kubectl: the files are read as they are.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import tomllib
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from journey.live.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = K8S / "kustomization.yaml"
MANIFESTS = sorted(p for p in K8S.glob("*.y*ml") if p != KUSTOMIZATION)
NAME = re.compile(r"\bJOURNEY_[A-Z0-9_]*[A-Z0-9]\b")
# variables whose value is a secret: only ever from a secretKeyRef (or a file, the *_FILE twins)
SECRET_VARS = {"JOURNEY_KAFKA_SASL_PASSWORD", "JOURNEY_KAFKA_SSL_KEY_PASSWORD", "JOURNEY_WRITE_KEYS"}
# the workloads, each checked by the parametrized tests below (a new one must be added here)
WORKLOADS = [("StatefulSet", "journey-worker"), ("Deployment", "journey-dispatch"), ("Deployment", "journey-intake")]


@cache
def docs() -> list[dict]:
    out = []
    for path in MANIFESTS:
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def one(kind: str, name: str) -> dict:
    found = [d for d in docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in {K8S}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def workloads() -> list[dict]:
    return [d for d in docs() if d["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job", "CronJob")]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def environment(container: dict) -> dict[str, dict]:
    """Every variable the container gets: name -> its env entry ({"value": ...} or {"valueFrom": ...}),
    envFrom ConfigMaps included (a Secret in envFrom would hide which keys it sets: not allowed)."""
    env: dict[str, dict] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom takes ConfigMaps only: {source}"
        cm = one("ConfigMap", source["configMapRef"]["name"])
        env.update({k: {"value": v} for k, v in cm.get("data", {}).items()})
    for e in container.get("env", []):
        env[e["name"]] = e
    return env


def value(container: dict, name: str) -> str:
    entry = environment(container).get(name)
    assert entry is not None and "value" in entry, f"{container['name']} does not set {name} to a value"
    return entry["value"]


def mounted_file(workload: dict, container: dict, path: str) -> tuple[dict, str]:
    """The volume (and the key inside it) a path in the container is read from."""
    for m in container.get("volumeMounts", []):
        prefix = m["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            volume = next(v for v in pod_spec(workload).get("volumes", []) if v["name"] == m["name"])
            return volume, path[len(prefix):]
    raise AssertionError(f"{container['name']}: nothing is mounted where {path} is")


def table_in(kind_name: tuple[str, str], key: str) -> tuple[dict, str]:
    text = one(*kind_name)["data"][key]
    return tomllib.loads(text), text


def dispatch_config() -> dict:
    return table_in(("ConfigMap", "journey-dispatch"), "dispatch.toml")[0]


@cache
def names_journey_reads() -> frozenset[str]:
    """JOURNEY_* names in string literals of journey's source, JOURNEY_<FIELD> of the worker's
    Settings, and the variables the dispatch config in the manifests names (secrets_env)."""
    names = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    for path in (ROOT / "journey").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.update(NAME.findall(node.value))
    names.update(e["secrets_env"] for e in dispatch_config().get("endpoints", {}).values() if "secrets_env" in e)
    return frozenset(names)


# -- the files ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path):
    version = kubernetes_validate.latest_version()
    resources = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert resources, f"{path.name} holds no resource"
    for resource in resources:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{path.name}: {resource['kind']}/{resource['metadata']['name']} against Kubernetes "
                        f"{e.version}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:  # a CRD's kind: nothing to validate it against
            pytest.fail(f"{path.name}: {e.message}; deploy/kubernetes uses built-in kinds only")


def test_kustomization_lists_every_manifest_and_sets_the_image():
    k = yaml.safe_load(KUSTOMIZATION.read_text())
    listed = k["resources"]
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    assert set(listed) == {p.name for p in MANIFESTS}, (
        f"not listed: {sorted({p.name for p in MANIFESTS} - set(listed))}; "
        f"listed but missing: {sorted(set(listed) - {p.name for p in MANIFESTS})}")
    assert k["namespace"] == "journey"
    assert one("Namespace", "journey")
    assert all("namespace" not in d["metadata"] or d["metadata"]["namespace"] == "journey" for d in docs())
    images = {i["name"]: i for i in k["images"]}
    used = {c["image"] for w in workloads() for c in containers(w)}
    assert used and used <= set(images), f"images without an images: entry: {used - set(images)}"
    assert all(images[n].get("newName") for n in used)


# -- what the manifests tell journey --------------------------------------------------------------------------

def test_every_variable_the_manifests_set_is_one_journey_reads():
    known = names_journey_reads()
    assert {"JOURNEY_BROKER", "JOURNEY_DATA_DIR", "JOURNEY_KAFKA_SASL_PASSWORD_FILE"} <= known  # the collection works
    set_by_manifests = {n for w in workloads() for c in containers(w) for n in environment(c)}
    journey_names = {n for n in set_by_manifests if n.startswith(ENV_PREFIX)}
    assert journey_names, "the manifests set no JOURNEY_* variable?"
    assert not journey_names - known, f"journey reads no such variable: {sorted(journey_names - known)}"
    # comments name variables too (the other way to connect, ...): those must exist as well
    mentioned = {n for p in [*MANIFESTS, KUSTOMIZATION] for n in NAME.findall(p.read_text())}
    assert not mentioned - known, f"named in a comment, read by nothing: {sorted(mentioned - known)}"


def test_paths_in_the_environment_are_mounted():
    for w in workloads():
        for c in containers(w):
            env = environment(c)
            for name in ("JOURNEY_RULES", "JOURNEY_DISPATCH_CONFIG", "JOURNEY_KAFKA_SASL_PASSWORD_FILE",
                         "JOURNEY_KAFKA_SSL_CAFILE", "JOURNEY_KAFKA_CONFIG", "JOURNEY_WRITE_KEYS_FILE"):
                if name in env:
                    volume, key = mounted_file(w, c, value(c, name))
                    source = volume.get("configMap") or volume.get("secret")
                    assert source, f"{c['name']}: {name} is not read from a ConfigMap or Secret"
                    if "items" in source:
                        assert key in {i["path"] for i in source["items"]}, f"{c['name']}: {name}: no item {key}"


def test_the_rule_file_and_the_dispatch_config_are_ones_journey_accepts(tmp_path):
    from journey.dispatch.config import load_dispatch_config
    from journey.io.rulefile import load_config

    worker = one("StatefulSet", "journey-worker")
    c = containers(worker)[0]
    volume, key = mounted_file(worker, c, value(c, "JOURNEY_RULES"))
    rules = tmp_path / key
    rules.write_text(one("ConfigMap", volume["configMap"]["name"])["data"][key])
    load_config(rules)  # raises ConfigError with the problems

    dispatch = one("Deployment", "journey-dispatch")
    c = containers(dispatch)[0]
    volume, key = mounted_file(dispatch, c, value(c, "JOURNEY_DISPATCH_CONFIG"))
    path = tmp_path / key
    path.write_text(one("ConfigMap", volume["configMap"]["name"])["data"][key])
    secrets = {e["secrets_env"] for e in dispatch_config()["endpoints"].values()}
    env = environment(c)
    for name in secrets:  # each signing secret the config names comes from a Secret
        assert "secretKeyRef" in env.get(name, {}).get("valueFrom", {}), f"{name} is not set from a Secret"
    load_dispatch_config(path, env=dict.fromkeys(secrets, "whsec_" + "A" * 32))


@pytest.mark.parametrize("workload, port_var, host_var", [
    (("StatefulSet", "journey-worker"), "JOURNEY_WEB_PORT", "JOURNEY_WEB_HOST"),
    (("Deployment", "journey-dispatch"), "JOURNEY_DISPATCH_WEB_PORT", "JOURNEY_DISPATCH_WEB_HOST"),
    (("Deployment", "journey-intake"), "JOURNEY_INTAKE_PORT", "JOURNEY_INTAKE_HOST"),
])
def test_probes_and_scraping_point_at_the_port_the_environment_sets(workload, port_var, host_var):
    w = one(*workload)
    c = containers(w)[0]
    port = int(value(c, port_var))
    assert value(c, host_var) == "0.0.0.0", "on loopback the kubelet and Prometheus cannot reach it"
    named = {p["name"]: p["containerPort"] for p in c["ports"] if "name" in p}
    assert port in {p["containerPort"] for p in c["ports"]}

    def resolve(p):
        return named[p] if isinstance(p, str) else p

    probes = {k: c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    for kind, probe in probes.items():
        assert resolve(probe["httpGet"]["port"]) == port, f"{kind} probes port {probe['httpGet']['port']}"
    notes = w["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == port
    assert notes["prometheus.io/path"] == "/metrics"
    labels = w["spec"]["template"]["metadata"]["labels"]
    for svc in (d for d in docs() if d["kind"] == "Service"):
        if svc["spec"]["selector"].items() <= labels.items():
            assert {resolve(p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]} == {port}


def test_the_parametrized_tests_cover_every_workload():
    assert sorted((w["kind"], w["metadata"]["name"]) for w in workloads()) == sorted(WORKLOADS)


def command_line(container: dict):
    """The container's command as journey's own parser reads it (an unknown flag fails here)."""
    from journey.cli import build_parser

    command = container["command"]
    assert command[0] == "journey", f"{container['name']}: {command}"
    try:
        return build_parser().parse_args([*command[1:], *container.get("args", [])])
    except SystemExit:
        pytest.fail(f"{container['name']}: journey does not take {command + container.get('args', [])}")


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w[1])
def test_workload_runs_journey_as_the_images_non_root_user(workload):
    w = one(*workload)
    spec = pod_spec(w)
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", dockerfile).group(1))
    gid = int(re.search(r"groupadd [^\n]*--gid (\d+)", dockerfile).group(1))
    assert re.search(rf"^USER {uid}\b", dockerfile, re.M), "the image's USER is not the numeric UID"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid != 0
    for c in containers(w):
        command_line(c)
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
    # a Secret's files belong to root; the user reads them through "other" bits, or the group bits
    # when the pod's fsGroup owns them
    for v in spec.get("volumes", []):
        if "secret" in v:
            mode = v["secret"].get("defaultMode", 0o644)
            assert mode & 0o004 or (mode & 0o040 and spec["securityContext"].get("fsGroup") == gid), (
                f"volume {v['name']}: mode {mode:o} without fsGroup {gid}: the user {uid} cannot read it")


def test_worker_is_a_statefulset_with_its_state_on_the_volume():
    w = one("StatefulSet", "journey-worker")
    spec = pod_spec(w)
    assert spec["securityContext"]["fsGroup"]  # the volume is writable by the user
    c = containers(w)[0]
    assert value(c, "JOURNEY_STORE").startswith("rocksdb://")
    data_dir = value(c, "JOURNEY_DATA_DIR")
    mount = next((m for m in c["volumeMounts"] if m["mountPath"].rstrip("/") == data_dir.rstrip("/")), None)
    assert mount, f"nothing is mounted at JOURNEY_DATA_DIR={data_dir}"
    assert mount["name"] in {t["metadata"]["name"] for t in w["spec"]["volumeClaimTemplates"]}, \
        "the data dir is not on a PersistentVolumeClaim"
    assert mount["name"] not in {v["name"] for v in spec.get("volumes", [])}


def test_worker_scaling_stopping_and_disruptions():
    import mode

    w = one("StatefulSet", "journey-worker")
    partitions = int(value(containers(w)[0], "JOURNEY_PARTITIONS"))
    assert 2 == w["spec"]["replicas"] <= partitions
    # Faust gives each part of the worker up to mode's shutdown_timeout to stop
    assert pod_spec(w)["terminationGracePeriodSeconds"] > mode.Service.shutdown_timeout
    svc = one("Service", w["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    labels = w["spec"]["template"]["metadata"]["labels"]
    pdbs = [d for d in docs() if d["kind"] == "PodDisruptionBudget"
            and d["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    assert len(pdbs) == 1 and pdbs[0]["spec"]["maxUnavailable"] == 1


def test_intake_rotates_write_keys_stops_in_time_and_leaves_topics_to_the_worker():
    w = one("Deployment", "journey-intake")
    spec = pod_spec(w)
    c = containers(w)[0]
    a = command_line(c)
    # the keys: a file from a Secret, mounted whole (a subPath mount never sees the Secret change, so a
    # rotated key would wait for a restart); never a value in the manifests
    path = value(c, "JOURNEY_WRITE_KEYS_FILE")
    volume, key = mounted_file(w, c, path)
    assert "secret" in volume and key in {i["path"] for i in volume["secret"].get("items", [{"path": key}])}
    mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
    assert "subPath" not in mount and "subPathExpr" not in mount and mount.get("readOnly") is True
    assert "JOURNEY_WRITE_KEYS" not in environment(c)
    # SIGTERM: the requests being worked on wait up to the ack timeout for Kafka, after the preStop pause
    pause = 0
    if "lifecycle" in c:
        command = c["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2
        pause = float(command[1])
    assert spec["terminationGracePeriodSeconds"] > pause + a.ack_timeout
    # topics: created by the worker with its partitions and replication, not by the intake (one replica)
    assert a.no_create_topics, "the intake would create missing topics with a replication factor of 1"
    # two replicas, one of them kept through a drain, and a Service in front of them
    assert w["spec"]["replicas"] == 2
    labels = w["spec"]["template"]["metadata"]["labels"]
    pdbs = [d for d in docs() if d["kind"] == "PodDisruptionBudget"
            and d["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    assert len(pdbs) == 1 and pdbs[0]["spec"]["maxUnavailable"] == 1
    services = [d for d in docs() if d["kind"] == "Service" and d["spec"]["selector"].items() <= labels.items()]
    assert [s["metadata"]["name"] for s in services] == ["journey-intake"]


def test_no_secret_value_is_inline():
    # Secrets are created beside the manifests (README), never kept in them
    assert not [d["metadata"]["name"] for d in docs() if d["kind"] == "Secret"]
    for w in workloads():
        for c in containers(w):
            for name, entry in environment(c).items():
                secret = name in SECRET_VARS or name.endswith("_SECRETS") or name == "JOURNEY_KAFKA_SASL_USERNAME"
                if secret:
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{c['name']}: {name} is not a reference"
    for cm in (d for d in docs() if d["kind"] == "ConfigMap"):
        assert not SECRET_VARS & set(cm.get("data", {})), f"ConfigMap {cm['metadata']['name']} holds a password"
    endpoints = dispatch_config()["endpoints"]
    for name, e in endpoints.items():
        assert "secrets" not in e, f"endpoint {name}: inline signing secrets (use secrets_env)"
        assert "@" not in e["url"].split("/")[2], f"endpoint {name}: credentials in the URL"
    for path in [*MANIFESTS, KUSTOMIZATION]:
        text = path.read_text()
        assert "-----BEGIN" not in text, f"{path.name}: a PEM block"
        assert not re.search(r"whsec_[A-Za-z0-9+/=]{8,}", text), f"{path.name}: a webhook signing secret"
        # a JAAS line (password="...") or a librdkafka property (sasl.password=...)
        assert not re.search(r'(?i)\bpassword\s*=\s*"[^"]', text), f"{path.name}: a JAAS password"
        assert not re.search(r"(?im)^[\s#]*sasl\.password\s*[=:]", text), f"{path.name}: a sasl.password"
