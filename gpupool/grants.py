"""Grants: the scheduler's signed permission to open sessions on one GPU of one node.

A grant names the allocation, the node and device, the memory quota, the compute fraction
and an expiry, and carries an HMAC-SHA256 over them with the cluster secret that the
scheduler and the daemons share. The secret never travels: a daemon checks a grant by
signing it again. The token is ``base64url(JSON).base64url(MAC)``; nothing in it is secret,
so a client may read its own quota from it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from gpupool.errors import CUDARuntimeError, GpupoolError

ENV_SECRET = "GPUPOOL_CLUSTER_SECRET"
REFUSED = "cudaErrorNotPermitted"


@dataclass(frozen=True)
class Grant:
    allocation: str
    node: str
    device: int
    memory: int  # the quota, bytes
    fraction: float
    expires_at: float  # Unix seconds


def load_secret(secret_file: str | None = None) -> bytes:
    """The cluster secret, from ``secret_file`` or ``GPUPOOL_CLUSTER_SECRET``."""
    if secret_file:
        secret = Path(secret_file).read_bytes().strip()
        where = secret_file
    else:
        secret = os.environ.get(ENV_SECRET, "").encode()
        where = ENV_SECRET
    if len(secret) < 16:
        raise GpupoolError(
            f"no cluster secret of at least 16 bytes in {where}: set {ENV_SECRET} or pass"
            " --secret-file (the scheduler and every daemon need the same one)"
        )
    return secret


def sign(grant: Grant, secret: bytes) -> str:
    payload = json.dumps(asdict(grant), sort_keys=True, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(payload, secret))}"


def verify(token: str, secret: bytes, node: str, device: int, now: float) -> Grant:
    """The grant ``token`` carries if it is genuine, unexpired and for ``node``'s ``device``.

    Raises ``CUDARuntimeError(cudaErrorNotPermitted)`` naming what is wrong.
    """
    if not token:
        raise CUDARuntimeError(REFUSED, "this daemon is part of a pool: a session needs a grant")
    try:
        payload_text, mac_text = token.split(".")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except ValueError:
        raise CUDARuntimeError(REFUSED, "the grant is malformed") from None
    if not hmac.compare_digest(mac, _mac(payload, secret)):
        raise CUDARuntimeError(REFUSED, "the grant's signature does not match (forged?)")
    grant = Grant(**json.loads(payload))
    if (grant.node, grant.device) != (node, device):
        raise CUDARuntimeError(
            REFUSED,
            f"the grant is for device {grant.device} of node {grant.node!r},"
            f" not device {device} of {node!r}",
        )
    if grant.expires_at <= now:
        raise CUDARuntimeError(
            REFUSED,
            f"the grant of allocation {grant.allocation} expired {now - grant.expires_at:.1f} s"
            " ago (renew the lease)",
        )
    return grant


def node_proof(name: str, secret: bytes) -> str:
    """What a daemon sends with its registration and heartbeats to show that it holds the
    cluster secret: without it, anyone who reaches the scheduler could register a node (and
    draw clients and their grants to it) or read a node's allocation ids (capabilities) from
    a heartbeat's reply."""
    return _b64(_mac(b"gpupool node " + name.encode(), secret))


def check_node_proof(name: str, proof: str, secret: bytes) -> bool:
    return hmac.compare_digest(proof.encode(), node_proof(name, secret).encode())


def read(token: str) -> Grant:
    """The grant in ``token``, unchecked (for the client, which has no secret)."""
    return Grant(**json.loads(_unb64(token.split(".")[0])))


def _mac(payload: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except Exception as exc:
        raise ValueError("not base64") from exc
