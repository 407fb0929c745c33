"""What ``gpupool webhook`` does to a pod: read its annotations, patch it to run through the pool.

Not a subcommand: the admission logic of ``webhook.py``, pure (a pod in, a JSON patch out).

A pod on any node asks for pool GPUs with annotations::

    gpupool.io/gpus: "2"            # required: how many GPUs
    gpupool.io/fraction: "0.5"      # or gpupool.io/memory: "4GiB" (not both)
    gpupool.io/policy: spread       # pack (default) or spread
    gpupool.io/same-node: "true"    # all GPUs on one node
    gpupool.io/ttl: "60"            # lease time-to-live, seconds
    gpupool.io/wait: "300"          # wait up to this long for capacity
    gpupool.io/container: trainer   # which container (needed when the pod has several)

The chosen container's command becomes ``gpupool run -n 2 --fraction 0.5 -- COMMAND...``
(its ``args`` follow as before), and it gets the scheduler's address and the client's
environment. Its image must have gpupool installed (the client image, or one built on it).
A container without ``command`` is refused: the webhook sees the pod, not the image, so it
cannot know an image's ENTRYPOINT to wrap it. Anything malformed is refused with a message
that names the annotation and what is wrong, and the pod is not created.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpupool.cli.options import count, fraction, seconds, size
from gpupool.client.lease import ENV_SCHEDULER
from gpupool.errors import GpupoolError

PREFIX = "gpupool.io/"
GPUS = PREFIX + "gpus"
INJECTED = PREFIX + "injected"
CA_VOLUME = "gpupool-ca"
CA_FOLDER = "/var/run/gpupool/ca"
ENV_TLS_CA = "GPUPOOL_TLS_CA"
POLICIES = ("pack", "spread")
TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")
MAX_VALUE = 64  # characters of an annotation's value: numbers, sizes and names are short

Patch = list[dict[str, Any]]


class Refused(GpupoolError):
    """A pod the webhook will not admit; the message goes back to whoever created it."""


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable of the client taken from a Secret of the pod's namespace."""

    name: str
    secret: str
    key: str

    @classmethod
    def parse(cls, text: str) -> SecretEnv:
        """``VAR=SECRET:KEY`` (the command line's form)."""
        name, _, ref = text.partition("=")
        secret, _, key = ref.partition(":")
        if not (name and secret and key):
            raise argparse.ArgumentTypeError(f"not VAR=SECRET:KEY: {text!r}")
        return cls(name, secret, key)


@dataclass(frozen=True)
class InjectConfig:
    """What the webhook gives every pod it wraps."""

    scheduler: str
    command: str = "gpupool"  # how the image runs gpupool
    env: Mapping[str, str] = field(default_factory=dict)  # plain client settings
    secret_env: Sequence[SecretEnv] = ()  # e.g. a team's token
    ca_secret: str | None = None  # a Secret with ca.crt: mounted, and GPUPOOL_TLS_CA set


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"one of {', '.join(choices)}, not {text!r}")
        return text

    return parse


def _flag(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"true or false, not {text!r}")


# annotation -> (its check, the option of `gpupool run` it becomes)
OPTIONS: dict[str, tuple[Callable[[str], object], str]] = {
    PREFIX + "fraction": (fraction, "--fraction"),
    PREFIX + "memory": (size, "--memory"),
    PREFIX + "policy": (_choice(POLICIES), "--policy"),
    PREFIX + "same-node": (_flag, "--same-node"),
    PREFIX + "ttl": (seconds, "--ttl"),
    PREFIX + "wait": (seconds, "--wait"),
}
KNOWN = {GPUS, INJECTED, PREFIX + "container", *OPTIONS}


def run_options(annotations: Mapping[str, str]) -> list[str] | None:
    """The ``gpupool run`` options the annotations ask for; None if the pod asks for no GPUs.

    Raises :class:`Refused` naming the first annotation that is wrong.
    """
    if GPUS not in annotations:
        for key in annotations:
            if key.startswith(PREFIX) and key != INJECTED:
                raise Refused(f"annotation {key} needs {GPUS} too (how many GPUs)")
        return None
    options = ["-n", str(_checked(GPUS, annotations[GPUS], count))]
    unknown = sorted(k for k in annotations if k.startswith(PREFIX) and k not in KNOWN)
    if unknown:
        raise Refused(
            f"unknown annotation {unknown[0]}; gpupool.io/ takes "
            + ", ".join(sorted(k.removeprefix(PREFIX) for k in KNOWN - {INJECTED}))
        )
    if PREFIX + "fraction" in annotations and PREFIX + "memory" in annotations:
        raise Refused("give gpupool.io/fraction or gpupool.io/memory, not both")
    for key, (check, option) in OPTIONS.items():
        if key not in annotations:
            continue
        parsed = _checked(key, annotations[key], check)
        if isinstance(parsed, bool):
            options += [option] if parsed else []
        else:
            options += [option, annotations[key].strip()]
    return options


def _checked(key: str, text: str, check: Callable[[str], object]) -> object:
    if len(text) > MAX_VALUE:
        raise Refused(f"annotation {key}: {len(text)} characters; a value has at most {MAX_VALUE}")
    try:
        return check(text.strip())
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise Refused(f"annotation {key}: {exc}") from None


def patch_pod(pod: Mapping[str, Any], config: InjectConfig) -> Patch:
    """The JSON patch (RFC 6902) that makes ``pod`` run through the pool; [] to leave it be."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, Mapping) or INJECTED in annotations:
        return []  # patched already (a reinvocation)
    options = run_options({str(k): str(v) for k, v in annotations.items()})
    if options is None:
        return []
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    index = _container(containers, annotations.get(PREFIX + "container"))
    container = containers[index]
    command = container.get("command")
    if not command:
        raise Refused(
            f"container {container.get('name')!r} sets no command: the webhook sees the pod,"
            " not the image, so it cannot wrap the image's ENTRYPOINT; set command (and args)"
            " in the pod spec"
        )
    at = f"/spec/containers/{index}"
    wrapped = [config.command, "run", *options, "--", *command]
    ops: Patch = [{"op": "replace", "path": f"{at}/command", "value": wrapped}]
    ops += _env_ops(at, container, _client_env(config))
    if config.ca_secret is not None:
        ops += _ca_ops(at, spec, container, config.ca_secret)
    ops.append(
        {"op": "add", "path": "/metadata/annotations/" + _pointer(INJECTED), "value": "true"}
    )
    return ops


def _container(containers: Sequence[Mapping[str, Any]], named: str | None) -> int:
    names = [str(c.get("name")) for c in containers]
    if named is not None:
        if named not in names:
            raise Refused(f"annotation {PREFIX}container: no container {named!r} ({names})")
        return names.index(named)
    if len(containers) != 1:
        raise Refused(
            f"the pod has {len(containers)} containers: say which one runs on the pool"
            f" with {PREFIX}container"
        )
    return 0


def _client_env(config: InjectConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": ENV_SCHEDULER, "value": config.scheduler}]
    env += [{"name": name, "value": value} for name, value in config.env.items()]
    env += [
        {"name": each.name, "valueFrom": {"secretKeyRef": {"name": each.secret, "key": each.key}}}
        for each in config.secret_env
    ]
    if config.ca_secret is not None:
        env.append({"name": ENV_TLS_CA, "value": f"{CA_FOLDER}/ca.crt"})
    return env


def _env_ops(at: str, container: Mapping[str, Any], env: list[dict[str, Any]]) -> Patch:
    """Add the client's environment; a variable the container sets itself stays its own."""
    present = container.get("env")
    taken = {each.get("name") for each in present or []}
    added = [each for each in env if each["name"] not in taken]
    if present is None:
        return [{"op": "add", "path": f"{at}/env", "value": added}] if added else []
    return [{"op": "add", "path": f"{at}/env/-", "value": each} for each in added]


def _ca_ops(at: str, spec: Mapping[str, Any], container: Mapping[str, Any], secret: str) -> Patch:
    volume = {"name": CA_VOLUME, "secret": {"secretName": secret}}
    mount = {"name": CA_VOLUME, "mountPath": CA_FOLDER, "readOnly": True}
    ops: Patch = []
    if "volumes" not in spec:
        ops.append({"op": "add", "path": "/spec/volumes", "value": [volume]})
    elif all(v.get("name") != CA_VOLUME for v in spec["volumes"]):
        ops.append({"op": "add", "path": "/spec/volumes/-", "value": volume})
    if "volumeMounts" not in container:
        ops.append({"op": "add", "path": f"{at}/volumeMounts", "value": [mount]})
    else:
        ops.append({"op": "add", "path": f"{at}/volumeMounts/-", "value": mount})
    return ops


def _pointer(key: str) -> str:
    """A JSON pointer's token for ``key`` (RFC 6901: ``~`` and ``/`` escaped)."""
    return key.replace("~", "~0").replace("/", "~1")
