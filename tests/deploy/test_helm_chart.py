"""The Helm chart (deploy/helm/invad): lint it, render it, and check what the rendered manifests promise.

Rendering uses the real helm binary (``scripts/tools.sh`` builds it into the cache; ``INVAD_HELM`` points
elsewhere). Standard kinds are validated offline against the Kubernetes JSON schemas that
kubernetes-validate bundles, in strict mode (an unknown field fails); the custom resources (KEDA,
Prometheus Operator) against small schemas of the fields this chart relies on.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services import unavailable
from worker.pipeline.config import OPTIONS, WorkerConfig

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "invad"
K8S_VERSION = "1.35"  # a recent release kubernetes-validate bundles schemas for
PROFILES = {"default": (), "cpu": ("values-cpu.yaml",), "production": ("values-production.yaml",)}
# Everything on: the production profile plus the example producer and an S3 key Secret.
EVERYTHING = ("values-production.yaml",), ("producer.enabled=true", "s3.credentials.existingSecret=invad-s3")
TOOLS_HINT = "run `scripts/tools.sh` (builds helm into ~/.cache/invad/bin) or set INVAD_HELM"


@functools.lru_cache(maxsize=1)
def _helm_path() -> str | None:
    candidates = [os.environ.get("INVAD_HELM"),
                  str(Path(os.environ.get("INVAD_CACHE", Path.home() / ".cache" / "invad")) / "bin" / "helm")]
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


@pytest.fixture(scope="module")
def helm() -> str:
    """The helm binary; missing, the test skips, or fails under INVAD_REQUIRE_SERVICES=1 (scripts/test.sh)."""
    return _helm_path() or unavailable(f"no helm binary: {TOOLS_HINT}")


def _run_helm(args: list[str]) -> subprocess.CompletedProcess:
    # No network: a proxy that refuses makes any attempt fail; private config dirs, no user repositories.
    home = Path(os.environ.get("PYTEST_HELM_HOME", "/tmp")) / f"invad-helm-test-{os.getuid()}"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}
    return subprocess.run([_helm_path(), *args], capture_output=True, text=True, timeout=120, env=env)


def _value_args(files: tuple[str, ...], sets: tuple[str, ...]) -> list[str]:
    return [arg for name in files for arg in ("-f", str(CHART / name))] + [a for s in sets for a in ("--set", s)]


@functools.lru_cache(maxsize=None)
def _template(files: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return _run_helm(["template", "invad", str(CHART), "--namespace", "vision",
                      "--kube-version", f"{K8S_VERSION}.0", *_value_args(files, sets)])


def render(files: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> list[dict]:
    """The manifests `helm template` renders for these values files and --set overrides."""
    done = _template(files, sets)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_error(*sets: str, files: tuple[str, ...] = ()) -> str:
    """stderr of a `helm template` that must fail."""
    done = _template(files, sets)
    assert done.returncode != 0, f"rendering with {sets} should have failed"
    return done.stderr


def one(docs: list[dict], kind: str, component: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind
             and (component is None or d["metadata"]["labels"].get("app.kubernetes.io/component") == component)]
    assert len(found) == 1, f"expected one {kind} {component or ''}, got {len(found)}"
    return found[0]


def worker_container(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0]


def configmap(docs: list[dict]) -> dict[str, str]:
    return one(docs, "ConfigMap", "worker")["data"]


# -- custom resources: the fields this chart relies on -----------------------------------------------
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_NAMED = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}
_CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): {"type": "object", "required": ["spec"], "properties": {"spec": {
        "type": "object", "additionalProperties": False,
        "required": ["scaleTargetRef", "minReplicaCount", "maxReplicaCount", "triggers"],
        "properties": {
            "scaleTargetRef": {**_NAMED, "additionalProperties": False},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "advanced": {"type": "object", "additionalProperties": False, "properties": {
                "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False, "properties": {
                    "behavior": {"type": "object"}}}}},
            "triggers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                "properties": {
                    "type": {"const": "kafka"},
                    # KEDA reads trigger metadata as map[string]string: a number here is rejected.
                    "metadata": {**_STRINGS, "required": ["bootstrapServers", "consumerGroup", "topic",
                                                          "lagThreshold", "allowIdleConsumers"]},
                    "authenticationRef": {**_NAMED, "additionalProperties": False}}}}}}}},
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {"type": "object", "required": ["spec"], "properties": {"spec": {
        "type": "object", "additionalProperties": False, "required": ["secretTargetRef"], "properties": {
            "secretTargetRef": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["parameter", "name", "key"],
                "properties": {"parameter": {"enum": ["username", "password", "ca", "cert", "key", "sasl", "tls"]},
                               "name": {"type": "string", "minLength": 1}, "key": {"type": "string"}}}}}}}},
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {"type": "object", "required": ["spec"], "properties": {"spec": {
        "type": "object", "required": ["selector", "endpoints"], "properties": {
            "selector": {"type": "object", "required": ["matchLabels"], "properties": {"matchLabels": _STRINGS}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port", "path"], "properties": {
                    "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                    "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                    "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}}}}}},
}


def validate(doc: dict) -> None:
    """Validate one manifest: Kubernetes schema (strict) for standard kinds, ours for custom resources."""
    schema = _CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema is not None:
        jsonschema.validate(doc, schema)
        assert doc["metadata"]["name"]
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# -- lint and schemas -----------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_helm_lint_passes(helm, profile):
    done = _run_helm(["lint", "--strict", "--kube-version", f"{K8S_VERSION}.0", str(CHART),
                      *_value_args(PROFILES[profile], ())])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("profile", [*PROFILES, "everything"])
def test_every_rendered_manifest_is_valid_offline(helm, profile):
    docs = render(*EVERYTHING) if profile == "everything" else render(PROFILES[profile])
    kinds = {doc["kind"] for doc in docs}
    assert {"ConfigMap", "Deployment", "PodDisruptionBudget", "Job", "ServiceAccount", "Service"} <= kinds
    if profile in ("production", "everything"):
        assert {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"} <= kinds
    for doc in docs:
        validate(doc)


def test_the_validators_catch_what_they_should(helm):
    docs = render(*EVERYTHING)
    deployment = one(docs, "Deployment", "worker")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    scaled = one(docs, "ScaledObject")
    trigger = {**scaled["spec"]["triggers"][0], "metadata": {**scaled["spec"]["triggers"][0]["metadata"],
                                                              "lagThreshold": 256}}
    with pytest.raises(jsonschema.ValidationError):
        validate({**scaled, "spec": {**scaled["spec"], "triggers": [trigger]}})


def test_a_misspelt_value_is_refused_by_the_values_schema(helm):
    assert "partition" in render_error("kafka.partition=3")
    assert "securityProtocol" in render_error("kafka.securityProtocol=TLS")


# -- what the manifests promise ----------------------------------------------------------------------------
def test_one_gpu_per_worker_pod_by_default_and_none_in_the_cpu_profile(helm):
    container = worker_container(render())
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    pod = one(render(), "Deployment", "worker")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert configmap(render())["INVAD_DEVICE"] == "cuda"

    cpu = render(PROFILES["cpu"])
    resources = worker_container(cpu)["resources"]
    assert not any("gpu" in name for section in resources.values() for name in section)
    pod = one(cpu, "Deployment", "worker")["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert configmap(cpu)["INVAD_DEVICE"] == "cpu"
    assert worker_container(render(sets=("worker.gpu.count=2",)))["resources"]["limits"]["nvidia.com/gpu"] == 2


@pytest.mark.parametrize("profile", PROFILES)
def test_probes_are_http_on_the_metrics_port(helm, profile):
    docs = render(PROFILES[profile])
    container = worker_container(docs)
    port = int(configmap(docs)["INVAD_METRICS_PORT"])
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    paths = {probe: container[probe]["httpGet"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"startupProbe": {"path": "/healthz", "port": "metrics"},
                     "readinessProbe": {"path": "/readyz", "port": "metrics"},
                     "livenessProbe": {"path": "/healthz", "port": "metrics"}}
    service = one(docs, "Service", "worker")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics" and service["spec"]["clusterIP"] == "None"
    moved = render(PROFILES[profile], ("metrics.port=9500",))
    assert configmap(moved)["INVAD_METRICS_PORT"] == "9500"
    assert worker_container(moved)["ports"][0]["containerPort"] == 9500


@pytest.mark.parametrize("sets", [(), ("worker.drainTimeoutSeconds=300",), ("worker.drainTimeoutSeconds=0",)])
@pytest.mark.parametrize("profile", PROFILES)
def test_termination_grace_outlasts_the_worst_batch_and_the_drain(helm, profile, sets):
    docs = render(PROFILES[profile], sets)
    grace = one(docs, "Deployment", "worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = float(configmap(docs)["INVAD_DRAIN_TIMEOUT_S"])
    assert grace > drain
    assert grace >= drain + 45  # the default worst batch


def test_replicas_never_exceed_partitions(helm):
    error = render_error("keda.enabled=true", "keda.maxReplicas=7", "kafka.partitions=6")
    assert "keda.maxReplicas=7 exceeds kafka.partitions=6" in error and "add partitions" in error
    error = render_error("worker.replicas=7", "kafka.partitions=6")
    assert "worker.replicas=7 exceeds kafka.partitions=6" in error
    assert "keda.maxReplicas" in render_error("kafka.partitions=23", files=PROFILES["production"])

    docs = render(PROFILES["production"])
    scaled = one(docs, "ScaledObject")
    partitions = one(docs, "Job", "topics")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--partitions={scaled['spec']['maxReplicaCount']}" in partitions  # = 24, the topic Job's count
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    assert trigger["allowIdleConsumers"] == "false"
    assert "replicas" not in one(docs, "Deployment", "worker")["spec"]  # KEDA owns the count
    cm = configmap(docs)
    assert (trigger["bootstrapServers"], trigger["consumerGroup"], trigger["topic"]) == (
        cm["INVAD_KAFKA_BOOTSTRAP"], cm["INVAD_GROUP"], cm["INVAD_TOPIC"])
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment", "worker")["metadata"]["name"]


def _secret_names() -> set[str]:
    return {"INVAD_REDIS_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            *(o.env[0] for o in OPTIONS if o.secret), "INVAD_KAFKA_SASL_USERNAME", "INVAD_KAFKA_SASL_PASSWORD"}


@pytest.mark.parametrize("profile", [*PROFILES, "everything"])
def test_secrets_are_referenced_never_inlined(helm, profile):
    docs = render(*EVERYTHING) if profile == "everything" else render(PROFILES[profile])
    assert not [doc for doc in docs if doc["kind"] == "Secret"]
    secret = _secret_names()
    assert not secret & set(configmap(docs))
    referenced = set()
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            for entry in container.get("env", []):
                if entry["name"] in secret:
                    assert set(entry) == {"name", "valueFrom"} and "secretKeyRef" in entry["valueFrom"], entry
                    referenced.add(entry["name"])
                else:
                    assert "@" not in str(entry.get("value", "")), entry  # no credentials in a URL
    assert "INVAD_REDIS_URL" in referenced
    if profile in ("production", "everything"):
        assert {"INVAD_KAFKA_SASL_USERNAME", "INVAD_KAFKA_SASL_PASSWORD"} <= referenced
    if profile == "everything":
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= referenced


def test_a_credential_in_values_is_refused(helm):
    assert "is a credential" in render_error("worker.settings.INVAD_REDIS_URL=redis://:pw@redis:6379/0")
    assert "is set by the chart" in render_error("worker.settings.INVAD_TOPIC=other")
    assert "kafka.sasl.existingSecret" in render_error("kafka.securityProtocol=SASL_SSL")
    assert "redis.existingSecret is empty" in render_error("redis.existingSecret=")


@pytest.fixture(scope="module")
def pem_pair(tmp_path_factory) -> dict[str, str]:
    """A throwaway self-signed certificate and its key, standing in for the files a pod mounts."""
    import shutil
    import subprocess
    if shutil.which("openssl") is None:
        unavailable("openssl is not installed (needed to stand in for the mounted TLS files)")
    folder = tmp_path_factory.mktemp("pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"), "-days", "1",
                    "-subj", "/CN=invad-test"], check=True, capture_output=True)
    return {"cert": str(folder / "cert.pem"), "key": str(folder / "key.pem")}


@pytest.mark.parametrize("profile", PROFILES)
def test_the_configmap_is_what_the_worker_accepts(helm, profile, pem_pair):
    docs = render(PROFILES[profile])
    data = configmap(docs)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    declared = {name for option in OPTIONS for name in option.env}
    pending = set(values["envNames"].values())  # settings other branches are adding (Kafka TLS/SASL, metrics)
    assert set(data) <= declared | pending, f"not worker settings: {sorted(set(data) - declared - pending)}"
    # The worker's own parser and cross-checks, on exactly these values plus a stand-in for each
    # variable the Deployment takes from a Secret (the Redis URL must parse as one).
    container = one(docs, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0]
    from_secrets = {env["name"]: "stand-in" for env in container.get("env", []) if "valueFrom" in env}
    # TLS files are mounted in the pod; here a real PEM pair stands in at each such setting.
    mounted = {name: pem_pair["key"] if name.endswith("KEYFILE") else pem_pair["cert"]
               for name in data if name.endswith(("_CAFILE", "_CERTFILE", "_KEYFILE", "_CA_CERTS"))}
    config = WorkerConfig.from_sources({}, {**data, **from_secrets, **mounted,
                                            "INVAD_REDIS_URL": "rediss://:secret@redis:6380/0"})
    assert config.topic == data["INVAD_TOPIC"] and config.dlq_topic == data["INVAD_DLQ_TOPIC"]
    assert config.drain_timeout_s == float(data["INVAD_DRAIN_TIMEOUT_S"])


def test_a_config_change_rolls_the_pods(helm):
    def checksum(*sets: str) -> str:
        return one(render(sets=sets), "Deployment", "worker")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"]
    base = checksum()
    assert base == checksum() and len(base) == 64
    assert checksum("worker.settings.INVAD_LOG_LEVEL=debug") != base
    assert checksum("kafka.topic=invad.other") != base
    assert checksum("worker.replicas=2") == base  # not a setting: no needless restart


def test_topic_job_is_a_hook_with_the_workers_kafka_settings(helm):
    docs = render(PROFILES["production"])
    job = one(docs, "Job", "topics")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/usr/bin/tini", "--", "invad"]
    assert container["args"][:2] == ["topics", "ensure"]
    assert "--partitions=24" in container["args"] and "--replication-factor=3" in container["args"]
    inline = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    cm = configmap(docs)
    for name in ("INVAD_KAFKA_BOOTSTRAP", "INVAD_TOPIC", "INVAD_DLQ_TOPIC", "INVAD_KAFKA_SECURITY_PROTOCOL",
                 "INVAD_KAFKA_SASL_MECHANISM", "INVAD_KAFKA_SSL_CAFILE"):
        assert inline[name] == cm[name], name
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert os.path.dirname(inline["INVAD_KAFKA_SSL_CAFILE"]) in mounts


def test_production_tls_and_sasl_wiring(helm):
    docs = render(PROFILES["production"])
    cm = configmap(docs)
    assert cm["INVAD_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and cm["INVAD_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    pod = one(docs, "Deployment", "worker")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"kafka-ca": "kafka-cluster-ca", "redis-ca": "redis-ca"}
    assert cm["INVAD_KAFKA_SSL_CAFILE"] == f"{mounts['kafka-ca']}/ca.crt"
    assert cm["INVAD_REDIS_SSL_CA_CERTS"] == f"{mounts['redis-ca']}/ca.crt"
    refs = one(docs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    auth = {ref["parameter"]: (ref["name"], ref["key"]) for ref in refs}
    assert auth == {"username": ("invad-kafka-user", "username"), "password": ("invad-kafka-user", "password"),
                    "ca": ("kafka-cluster-ca", "ca.crt")}
    trigger = one(docs, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert (trigger["sasl"], trigger["tls"]) == ("scram_sha512", "enable")
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_selectors_match_their_pods(helm):
    docs = render(*EVERYTHING)
    deployment = one(docs, "Deployment", "worker")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    service = one(docs, "Service", "worker")
    assert service["spec"]["selector"] == selector
    monitored = one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert monitored.items() <= service["metadata"]["labels"].items()
    producer = one(docs, "Deployment", "producer")
    assert producer["spec"]["selector"]["matchLabels"] != selector  # never counted as a worker
    assert one(docs, "PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_a_pointer_only_deployment_mounts_a_cache_and_no_claim(helm):
    """Products that follow `invad models activate` need no bundle volume, only room for downloads."""
    docs = render(sets=("models.bundles=", "models.pointers=*"))
    data = configmap(docs)
    assert data["INVAD_MODEL_POINTERS"] == "*" and "INVAD_MODELS" not in data
    pod = one(docs, "Deployment", "worker")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "models" not in volumes and volumes["model-cache"]["emptyDir"]["sizeLimit"] == "4Gi"
    mounts = {mount["name"]: mount["mountPath"] for mount in worker_container(docs)["volumeMounts"]}
    assert mounts["model-cache"] == data["INVAD_MODEL_CACHE_DIR"]
    assert "models.bundles" in render_error("models.bundles=")  # neither bundles nor pointers
