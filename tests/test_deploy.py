"""deploy/: the Kubernetes manifests, the images' Dockerfiles and the Grafana dashboard.

Every manifest is validated against the current Kubernetes schema (kubernetes-validate);
custom resources it has no schema for (ServiceMonitor, cert-manager's) are checked by their
structure, and the objects are checked against each other: what selects what, what each
pod mounts and probes, and that every gpupool command line parses with the real CLI.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from gpupool.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
IMAGES = ROOT / "deploy" / "images"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
K8S = kubernetes_validate.latest_version()
NAMESPACE = "gpupool"
# made outside the base, as docs/operations.md says: by cert-manager (../cert-manager)
MADE_ELSEWHERE = {("Secret", "gpupool-webhook-tls")}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q")


def documents(folder: Path) -> list[dict[str, Any]]:
    """The objects a kustomization makes: its resources, and its generated ConfigMaps."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        objects += [doc for doc in yaml.safe_load_all((folder / resource).read_text()) if doc]
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(name).name: (folder / name).read_text() for name in generator["files"]}
        labels = generator.get("options", {}).get("labels", {})
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"], "namespace": NAMESPACE, "labels": labels},
                "data": data,
            }
        )
    return objects


OBJECTS = documents(BASE)
CERTS = documents(KUBE / "cert-manager")


def of_kind(kind: str, objects: list[dict[str, Any]] = OBJECTS) -> list[dict[str, Any]]:
    return [each for each in objects if each["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [each for each in of_kind(kind) if each["metadata"]["name"] == name]
    return found


def pod_specs() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for kind in WORKLOADS:
        for workload in of_kind(kind):
            yield workload, workload["spec"]["template"]


def test_every_file_of_the_base_is_in_its_kustomization() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert files == listed
    assert kustomization["namespace"] == NAMESPACE
    images = {image["name"]: image["newTag"] for image in kustomization["images"]}
    assert set(images.values()) == {VERSION}


@pytest.mark.parametrize(
    "manifest",
    [each for each in OBJECTS + CERTS if not each["apiVersion"].endswith(".coreos.com/v1")]
    + [each for each in OBJECTS if each["kind"] == "ServiceMonitor"],
    ids=lambda each: f"{each['kind']}/{each['metadata']['name']}",
)
def test_manifests_validate_against_current_kubernetes(manifest: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(manifest, K8S, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        check_custom_resource(manifest)  # no schema for a CRD: its structure, below
    metadata = manifest["metadata"]
    assert metadata["labels"]["app.kubernetes.io/part-of"] == "gpupool"
    cluster_wide = manifest["kind"] in ("Namespace", "MutatingWebhookConfiguration")
    assert metadata.get("namespace") == (None if cluster_wide else NAMESPACE)


def check_custom_resource(manifest: dict[str, Any]) -> None:
    kind, spec = manifest["kind"], manifest["spec"]
    if kind == "ServiceMonitor":
        assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
        wanted = spec["selector"]["matchLabels"]
        services = [
            s for s in of_kind("Service") if wanted.items() <= s["metadata"]["labels"].items()
        ]
        assert {s["metadata"]["name"] for s in services} == {"gpupool-scheduler", "gpupool-daemon"}
        assert spec["namespaceSelector"]["matchNames"] == [NAMESPACE]
        for endpoint in spec["endpoints"]:
            assert re.fullmatch(r"\d+[sm]", endpoint["interval"])
            for service in services:
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    elif kind == "Issuer":
        assert manifest["apiVersion"] == "cert-manager.io/v1" and spec == {"selfSigned": {}}
    elif kind == "Certificate":
        assert manifest["apiVersion"] == "cert-manager.io/v1"
        assert spec["secretName"] == "gpupool-webhook-tls"
        (issuer,) = of_kind("Issuer", CERTS)
        assert spec["issuerRef"] == {"name": issuer["metadata"]["name"], "kind": "Issuer"}
        service = named("Service", "gpupool-webhook")
        assert f"{service['metadata']['name']}.{NAMESPACE}.svc" in spec["dnsNames"]
    else:
        raise AssertionError(f"no check for {kind}")


def test_every_service_selects_pods_and_names_their_ports() -> None:
    for service in of_kind("Service"):
        selector = service["spec"]["selector"]
        pods = [t for _, t in pod_specs() if selector.items() <= t["metadata"]["labels"].items()]
        assert len(pods) == 1, service["metadata"]["name"]
        ports = {p["name"] for c in pods[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports


def test_pods_run_gpupool_commands_the_cli_takes() -> None:
    secrets = {("Secret", s["metadata"]["name"]) for s in of_kind("Secret")} | MADE_ELSEWHERE
    accounts = {s["metadata"]["name"] for s in of_kind("ServiceAccount")}
    commands = {}
    for workload, template in pod_specs():
        spec = template["spec"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= (
            template["metadata"]["labels"].items()
        )
        assert spec["serviceAccountName"] in accounts
        assert spec["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in secrets
        (container,) = spec["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["image"].split(":")[1] == VERSION
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes or mount["name"] in claims
        ports = {p["name"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in ports
        args = _expanded(container)
        assert container["command"] == ["gpupool"]
        parsed = build_parser().parse_args(args)
        commands[parsed.command] = (parsed, container, spec)
    assert set(commands) == {"scheduler", "daemon", "webhook"}
    for name in ("scheduler", "daemon"):
        parsed, container, _ = commands[name]
        assert parsed.secret_file.startswith(_mount_of(container, "cluster-secret"))
        assert parsed.metrics_listen.endswith(":9400")
    scheduler, container, _ = commands["scheduler"]
    assert Path(scheduler.db).parent == Path(_mount_of(container, "state"))  # on the claim
    daemon, container, spec = commands["daemon"]
    assert daemon.scheduler == webhook_scheduler(commands) == "gpupool-scheduler.gpupool.svc:7000"
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert spec["nodeSelector"] and spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    shm = next(v for v in spec["volumes"] if v["name"] == _volume_at(container, "/dev/shm"))
    assert shm["emptyDir"]["medium"] == "Memory"
    webhook, container, _ = commands["webhook"]
    assert str(webhook.tls_cert).startswith(_mount_of(container, "tls"))


def webhook_scheduler(commands: dict[str, Any]) -> str:
    return str(commands["webhook"][0].scheduler)


def _expanded(container: dict[str, Any]) -> list[str]:
    """The container's args as Kubernetes expands them: $(VAR) from its env."""
    env = {e["name"] for e in container.get("env", [])}

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"$({match.group(1)}) is not in the container's env"
        return "10.0.0.1" if match.group(1) == "POD_IP" else "node-1"

    return [re.sub(r"\$\((\w+)\)", value, arg) for arg in container["args"]]


def _mount_of(container: dict[str, Any], volume: str) -> str:
    (mount,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    return str(mount)


def _volume_at(container: dict[str, Any], path: str) -> str:
    (name,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == path]
    return str(name)


def test_the_webhook_configuration_calls_the_webhook_service() -> None:
    (configuration,) = of_kind("MutatingWebhookConfiguration")
    (hook,) = configuration["webhooks"]
    target = hook["clientConfig"]["service"]
    service = named("Service", target["name"])
    assert target["namespace"] == NAMESPACE and target["path"] == "/mutate"
    assert target["port"] in {p["port"] for p in service["spec"]["ports"]}
    assert hook["rules"][0]["resources"] == ["pods"]
    assert hook["namespaceSelector"]["matchLabels"] == {"gpupool.io/injection": "enabled"}
    certificate = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    (made,) = of_kind("Certificate", CERTS)
    assert certificate == f"{NAMESPACE}/{made['metadata']['name']}"


def test_network_policies_open_every_port_pods_serve_on() -> None:
    policies = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: p
        for p in of_kind("NetworkPolicy")
    }
    for _, template in pod_specs():
        name = template["metadata"]["labels"]["app.kubernetes.io/name"]
        opened = {
            port["port"] for rule in policies[name]["spec"]["ingress"] for port in rule["ports"]
        }
        served = {p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]}
        assert served <= opened, name


# the images


def dockerfiles() -> list[Path]:
    return sorted(IMAGES.glob("*.Dockerfile"))


def test_there_is_an_image_for_each_part() -> None:
    assert [p.name for p in dockerfiles()] == [
        "client.Dockerfile",
        "daemon.Dockerfile",
        "server.Dockerfile",
    ]
    used = {c["image"].split(":")[0] for _, t in pod_specs() for c in t["spec"]["containers"]}
    assert used == {"gpupool/daemon", "gpupool/server"}


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_dockerfiles_install_the_wheel_and_run_unprivileged(path: Path) -> None:
    parsed = DockerfileParser(str(path))
    instructions = [(i["instruction"], i["value"]) for i in parsed.structure]
    kinds = [kind for kind, _ in instructions]
    base = parsed.baseimage
    assert ":" in base and not base.endswith(":latest"), "a pinned base image"
    assert parsed.args["VERSION"] == VERSION
    copies = [value for kind, value in instructions if kind == "COPY"]
    assert copies == ["dist/gpupool-${VERSION}-py3-none-any.whl /tmp/"]
    installs = " ".join(value for kind, value in instructions if kind == "RUN")
    assert "pip install" in installs and "/tmp/gpupool-${VERSION}-py3-none-any.whl" in installs
    users = [value for kind, value in instructions if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    assert "HEALTHCHECK" in kinds and "ENTRYPOINT" in kinds
    entrypoint = json.loads(dict(instructions)["ENTRYPOINT"])
    assert entrypoint[0] == "gpupool"
    command = json.loads(dict(instructions)["CMD"])
    if entrypoint == ["gpupool"]:  # a service: its default command parses, metrics on
        args = build_parser().parse_args(command)
        assert args.metrics_listen == "0.0.0.0:9400"
        assert "9400" in dict(instructions)["EXPOSE"].split()
        assert "127.0.0.1:9400/healthz" in dict(instructions)["HEALTHCHECK"]
    else:
        assert dict(instructions)["HEALTHCHECK"] == "NONE"
    text = path.read_text()
    assert f"-f deploy/images/{path.name}" in text  # its build command is written down
    if path.name == "daemon.Dockerfile":
        assert base.startswith("nvidia/cuda:") and "-runtime-" in base
        assert "[gpu]" in installs  # CuPy and NVML


def test_the_wheel_the_images_copy_is_what_pip_builds(tmp_path: Path) -> None:
    """The documented build step, for real: its wheel has the name the Dockerfiles copy."""
    result = subprocess.run(
        [*PIP_WHEEL, "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name == f"gpupool-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "gpupool/cli/webhook.py" in names and "gpupool/server/metrics.py" in names
    assert "gpupool/server/backends/gpupool_emu.h" in names  # package data comes along


# the dashboard


def renderer() -> Any:
    name = "gpupool_docs_dashboard_render"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs/dashboard/render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


DASHBOARD = json.loads((BASE / "dashboards" / "gpupool.json").read_text())


def test_the_dashboard_is_laid_out_on_grafanas_grid() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"] for p in DASHBOARD["panels"]).lower()
    for subject in ("capacity", "memory", "utilisation", "sessions", "copy", "queue"):
        assert subject in titles


def test_dashboard_queries_name_only_exported_metrics(tmp_path: Path) -> None:
    """Every metric a panel reads is one the real daemon and scheduler export."""
    from gpupool.scheduler.service import start_scheduler
    from gpupool.server.daemon import PoolMembership, start_daemon

    render = renderer()
    secret = b"deploy-test-secret-0123456789"
    scheduler = start_scheduler(
        "127.0.0.1:0", str(tmp_path / "db"), secret, heartbeat_s=0.2, metrics_listen="127.0.0.1:0"
    )
    try:
        membership = PoolMembership(scheduler.address, "n1", secret)
        with start_daemon(
            backend="emu",
            emu_devices=1,
            emu_memory=1 << 28,
            membership=membership,
            metrics_listen="127.0.0.1:0",
        ) as daemon:
            assert daemon.metrics is not None and scheduler.metrics is not None
            exported = {name for name, _ in render.scrape(daemon.metrics.url)}
            exported |= {name for name, _ in render.scrape(scheduler.metrics.url)}
    finally:
        scheduler.stop()
    queries = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    read = set().union(*(render.metric_names(query) for query in queries))
    assert read <= exported, read - exported
    assert len(read) >= 15


def test_the_query_reader_refuses_what_it_cannot_evaluate() -> None:
    render = renderer()
    assert render.metric_names('sum by (a, b) (rate(x_total{c="d"}[5m]))') == {"x_total"}
    for query in ("avg(x)", "x > 1", "sum(x) / sum(y)", 'x{a=~"b"}', "rate(x[5])"):
        with pytest.raises(ValueError):
            render.parse(query)
    history = [
        (
            0.0,
            {("x_total", frozenset({("a", "1")})): 0.0, ("x_total", frozenset({("a", "2")})): 5.0},
        ),
        (
            10.0,
            {("x_total", frozenset({("a", "1")})): 20.0, ("x_total", frozenset({("a", "2")})): 5.0},
        ),
    ]
    rates = render.evaluate(render.parse("sum by (a) (rate(x_total[1m]))"), history, 1)
    assert rates == {frozenset({("a", "1")}): 2.0, frozenset({("a", "2")}): 0.0}
    assert render.evaluate(render.parse("sum(x_total)"), history, 1) == {frozenset(): 25.0}


def test_the_docs_show_the_rendered_dashboard() -> None:
    picture = ROOT / "docs" / "img" / "dashboard.png"
    assert picture.stat().st_size > 20_000
    assert "img/dashboard.png" in (ROOT / "docs" / "operations.md").read_text()


@pytest.mark.parametrize("unit", sorted((ROOT / "deploy").glob("*.service")), ids=lambda p: p.name)
def test_systemd_units_run_command_lines_the_cli_takes(unit: Path) -> None:
    (line,) = [each for each in unit.read_text().splitlines() if each.startswith("ExecStart=")]
    program, *args = line.removeprefix("ExecStart=").split()
    assert program == "/opt/gpupool/bin/gpupool"
    parsed = build_parser().parse_args(args)
    assert parsed.command == unit.stem.removeprefix("gpupool-")
    assert parsed.metrics_listen == "0.0.0.0:9400"
