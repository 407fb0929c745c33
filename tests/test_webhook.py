"""``gpupool webhook``: real AdmissionReviews over HTTPS to the running command."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from gpupool.cli import build_parser
from tests.conftest import GPUPOOL, scrape, self_signed, value

K8S_VERSION = kubernetes_validate.latest_version()
SCHEDULER = "gpupool-scheduler.gpupool.svc:7000"


class Webhook:
    def __init__(self, url: str, ca: Path) -> None:
        self.url = url
        self.tls = ssl.create_default_context(cafile=str(ca))

    def post(self, body: bytes, path: str = "/mutate") -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.url + path, body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.tls) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def review(self, pod: dict[str, Any], uid: str = "0c2d9d5e") -> dict[str, Any]:
        status, body = self.post(json.dumps(admission_review(pod, uid)).encode())
        assert status == 200, body
        answer = json.loads(body)
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == uid
        return dict(answer["response"])


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    """The ``gpupool webhook`` command, as the Deployment runs it, on a free port."""
    folder = tmp_path_factory.mktemp("webhook")
    cert, key = self_signed(folder)
    process = subprocess.Popen(
        [
            *GPUPOOL,
            "webhook",
            "--listen=127.0.0.1:0",
            f"--tls-cert={cert}",
            f"--tls-key={key}",
            f"--scheduler={SCHEDULER}",
            "--env=GPUPOOL_TRANSPORT=tcp",
            "--secret-env=GPUPOOL_TOKEN=gpupool-token:token",
            "--ca-secret=gpupool-ca",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("gpupool webhook on https://127.0.0.1:"), line
        yield Webhook(line.split()[-1], cert)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stdout is not None
        process.stdout.close()


def admission_review(pod: dict[str, Any], uid: str) -> dict[str, Any]:
    """What the API server sends for a pod being created."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "vision",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": pod,
            "dryRun": False,
        },
    }


def pod(annotations: dict[str, str], **container: Any) -> dict[str, Any]:
    spec = {"name": "trainer", "image": "registry.example/gpupool-client:0.1.0", **container}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "train", "namespace": "vision", "annotations": annotations},
        "spec": {"containers": [spec], "restartPolicy": "Never"},
    }


def patched(original: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(original, operations)
    return result


def test_an_annotated_pod_comes_back_wrapped_in_gpupool_run(webhook: Webhook) -> None:
    original = pod(
        {"gpupool.io/gpus": "2", "gpupool.io/fraction": "0.5", "gpupool.io/policy": "spread"},
        command=["python", "train.py"],
        args=["--epochs", "1"],
    )
    result = patched(original, webhook.review(original))
    container = result["spec"]["containers"][0]
    assert container["command"] == [
        "gpupool",
        *("run", "-n", "2", "--fraction", "0.5", "--policy", "spread"),
        *("--", "python", "train.py"),
    ]
    assert container["args"] == ["--epochs", "1"]  # args follow the command as before
    env = {each["name"]: each for each in container["env"]}
    assert env["GPUPOOL_SCHEDULER"]["value"] == SCHEDULER
    assert env["GPUPOOL_TRANSPORT"]["value"] == "tcp"
    assert env["GPUPOOL_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "gpupool-token", "key": "token"}
    }
    assert env["GPUPOOL_TLS_CA"]["value"] == "/var/run/gpupool/ca/ca.crt"
    assert container["volumeMounts"] == [
        {"name": "gpupool-ca", "mountPath": "/var/run/gpupool/ca", "readOnly": True}
    ]
    assert result["spec"]["volumes"] == [
        {"name": "gpupool-ca", "secret": {"secretName": "gpupool-ca"}}
    ]
    assert result["metadata"]["annotations"]["gpupool.io/injected"] == "true"
    kubernetes_validate.validate(result, K8S_VERSION, strict=True)  # still a valid pod
    # what the container runs is a command line `gpupool run` takes as meant
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert (args.command, args.count, args.fraction, args.policy) == ("run", 2, 0.5, "spread")
    assert args.cmd == ["--", "python", "train.py", "--epochs", "1"]
    # the API server calls again on reinvocation: a wrapped pod is left as it is
    again = webhook.review(result)
    assert again["allowed"] is True and "patch" not in again


def test_existing_env_volumes_and_mounts_are_kept(webhook: Webhook) -> None:
    original = pod(
        {"gpupool.io/gpus": "1", "gpupool.io/memory": "4GiB", "gpupool.io/same-node": "true"},
        command=["python", "-m", "serve"],
        env=[{"name": "GPUPOOL_SCHEDULER", "value": "mine:7000"}, {"name": "A", "value": "1"}],
        volumeMounts=[{"name": "data", "mountPath": "/data"}],
    )
    original["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    result = patched(original, webhook.review(original))
    container = result["spec"]["containers"][0]
    assert container["command"][:7] == [
        "gpupool",
        *("run", "-n", "1", "--memory", "4GiB", "--same-node"),
    ]
    names = [each["name"] for each in container["env"]]
    added = ["GPUPOOL_TRANSPORT", "GPUPOOL_TOKEN", "GPUPOOL_TLS_CA"]
    assert names == ["GPUPOOL_SCHEDULER", "A", *added]
    assert container["env"][0]["value"] == "mine:7000"  # the pod's own setting wins
    assert [m["name"] for m in container["volumeMounts"]] == ["data", "gpupool-ca"]
    assert [v["name"] for v in result["spec"]["volumes"]] == ["data", "gpupool-ca"]
    kubernetes_validate.validate(result, K8S_VERSION, strict=True)


def test_a_pod_that_asks_for_nothing_is_left_alone(webhook: Webhook) -> None:
    for asked in ({}, {"example.com/team": "vision"}):
        response = webhook.review(pod(asked, command=["sleep", "1"]))
        assert response == {"uid": "0c2d9d5e", "allowed": True}


TWO = {"name": "sidecar", "image": "busybox", "command": ["sleep", "inf"]}


@pytest.mark.parametrize(
    ("annotations", "container", "message"),
    [
        ({"gpupool.io/gpus": "0"}, {}, "annotation gpupool.io/gpus: not a positive count: '0'"),
        ({"gpupool.io/gpus": "two"}, {}, "annotation gpupool.io/gpus: not a positive count"),
        ({"gpupool.io/gpus": "9" * 5000}, {}, "5000 characters; a value has at most 64"),
        (
            {"gpupool.io/gpus": "1", "gpupool.io/fraction": "1.5"},
            {},
            "annotation gpupool.io/fraction: a fraction of a GPU is in [0.01, 1], not '1.5'",
        ),
        (
            {"gpupool.io/gpus": "1", "gpupool.io/fraction": "0.5", "gpupool.io/memory": "1GiB"},
            {},
            "give gpupool.io/fraction or gpupool.io/memory, not both",
        ),
        ({"gpupool.io/gpus": "1", "gpupool.io/memory": "lots"}, {}, "annotation gpupool.io/mem"),
        ({"gpupool.io/gpus": "1", "gpupool.io/policy": "best"}, {}, "one of pack, spread"),
        ({"gpupool.io/gpus": "1", "gpupool.io/wait": "-1"}, {}, "not a number of seconds"),
        ({"gpupool.io/gpus": "1", "gpupool.io/same-node": "maybe"}, {}, "true or false"),
        ({"gpupool.io/gpus": "1", "gpupool.io/gpu-memory": "1GiB"}, {}, "unknown annotation"),
        ({"gpupool.io/fraction": "0.5"}, {}, "needs gpupool.io/gpus too"),
        ({"gpupool.io/gpus": "1"}, {"command": None}, "sets no command"),
        ({"gpupool.io/gpus": "1"}, {"two": True}, "say which one runs on the pool"),
        (
            {"gpupool.io/gpus": "1", "gpupool.io/container": "nope"},
            {},
            "no container 'nope'",
        ),
    ],
)
def test_malformed_requests_are_refused_with_a_clear_message(
    webhook: Webhook, annotations: dict[str, str], container: dict[str, Any], message: str
) -> None:
    spec = pod(annotations, command=["python", "train.py"])
    if container.get("command", ...) is None:
        del spec["spec"]["containers"][0]["command"]
    if container.get("two"):
        spec["spec"]["containers"].append(copy.deepcopy(TWO))
    response = webhook.review(spec)
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert message in response["status"]["message"]
    assert "patch" not in response


def test_what_is_not_an_admission_review_gets_http_400(webhook: Webhook) -> None:
    assert webhook.post(b"{not json")[0] == 400
    assert webhook.post(b"[]")[0] == 400
    status, body = webhook.post(json.dumps({"kind": "AdmissionReview"}).encode())
    assert (status, body) == (400, b"not an AdmissionReview with a request\n")
    no_uid = admission_review(pod({}), "")
    assert webhook.post(json.dumps(no_uid).encode())[0] == 400
    assert webhook.post(b"{}", path="/elsewhere")[0] == 404
    host, port = webhook.url.removeprefix("https://").rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        webhook.tls.wrap_socket(raw, server_hostname=host) as secured,
    ):  # a body too big is refused from its length, before it is read
        secured.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 4194305\r\n\r\n")
        assert secured.recv(100).startswith(b"HTTP/1.1 400")
    with urllib.request.urlopen(webhook.url + "/healthz", timeout=10, context=webhook.tls) as ok:
        assert ok.read() == b"ok\n"


def test_plain_text_and_silent_clients_do_not_stop_it(webhook: Webhook) -> None:
    host, port = webhook.url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as plain:
        plain.sendall(b"POST /mutate HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        plain.settimeout(10)
        try:
            answer = plain.recv(100)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")
    with socket.create_connection((host, int(port)), timeout=10):  # says nothing, stays open
        response = webhook.review(pod({}, command=["true"]), uid="after")
        assert response == {"uid": "after", "allowed": True}


def test_the_pod_of_the_operations_guide_is_wrapped_as_it_says(webhook: Webhook) -> None:
    guide = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    (example,) = [
        block for block in re.findall(r"```yaml\n(.*?)```", guide, re.S) if "kind: Pod" in block
    ]
    asked = yaml.safe_load(example)
    result = patched(asked, webhook.review(asked))
    container = result["spec"]["containers"][0]
    options = ["-n", "2", "--fraction", "0.5", "--policy", "spread", "--same-node"]
    assert container["command"] == [
        "gpupool",
        "run",
        *options,
        "--wait",
        "600",
        "--",
        "python",
        "train.py",
    ]
    assert container["args"] == ["--epochs", "3"]
    kubernetes_validate.validate(result, K8S_VERSION, strict=True)


def test_connections_past_the_limit_are_closed_and_service_resumes(webhook: Webhook) -> None:
    from gpupool.cli.webhook import MAX_CONNECTIONS

    host, port = webhook.url.removeprefix("https://").rsplit(":", 1)
    silent = [
        socket.create_connection((host, int(port)), timeout=10) for _ in range(MAX_CONNECTIONS)
    ]
    try:
        with socket.create_connection((host, int(port)), timeout=10) as extra:
            extra.settimeout(10)
            assert extra.recv(1) == b""  # closed at once: the server holds its 128
    finally:
        for each in silent:
            each.close()
    deadline = time.monotonic() + 10
    while True:  # the silent ones' threads see them closed and give their places back
        try:
            response = webhook.review(pod({}, command=["true"]), uid="resumed")
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert response == {"uid": "resumed", "allowed": True}


def test_a_patched_pod_runs_on_the_pool(tmp_path: Path) -> None:
    """What the webhook makes of a pod runs for real: its container's command and environment,
    run here against a real scheduler and daemon, allocate a GPU share and use it."""
    from gpupool.cli.pod_patch import InjectConfig
    from gpupool.cli.webhook import serve_webhook
    from gpupool.scheduler.service import start_scheduler
    from gpupool.server.daemon import PoolMembership, start_daemon

    secret = b"webhook-pool-secret-0123456789"
    scheduler = start_scheduler("127.0.0.1:0", str(tmp_path / "db"), secret, heartbeat_s=0.2)
    cert, key = self_signed(tmp_path)
    config = InjectConfig(scheduler.address, env={"GPUPOOL_TRANSPORT": "tcp"})
    hook = serve_webhook("127.0.0.1:0", config, cert, key)
    try:
        membership = PoolMembership(scheduler.address, "n1", secret)
        with start_daemon(
            backend="emu",
            emu_devices=1,
            emu_memory=1 << 30,
            membership=membership,
            metrics_listen="127.0.0.1:0",
        ) as daemon:
            assert daemon.registration is not None and daemon.registration.registered.wait(30)
            program = "import cupy; print(float(cupy.arange(5).sum()))"
            asked = pod(
                {"gpupool.io/gpus": "1", "gpupool.io/fraction": "0.25"},
                command=["python", "-c", program],
            )
            client = Webhook(hook.url, cert)
            container = patched(asked, client.review(asked))["spec"]["containers"][0]
            env = {e["name"]: e["value"] for e in container["env"]}
            command = container["command"]
            assert command[0] == "gpupool" and command[command.index("--") + 1] == "python"
            run = subprocess.run(
                [
                    *GPUPOOL,
                    *command[1 : command.index("--") + 1],
                    sys.executable,
                    *command[command.index("--") + 2 :],
                ],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, run.stderr
            assert run.stdout.split() == ["10.0"]
            assert daemon.metrics is not None
            after = scrape(daemon.metrics.url)
            tcp = {"device": "0", "transport": "tcp"}
            assert value(after, "gpupool_session_opens_total", **tcp) == 1
            assert value(after, "gpupool_array_ops_total", **tcp) >= 2
    finally:
        hook.close()
        scheduler.stop()
