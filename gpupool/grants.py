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
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf.message import Message

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


PROOF_WINDOW_S = 30.0  # how far a node call's time may be from the scheduler's clock


def node_proof(call: str, node: str, body: bytes, secret: bytes, now: float, nonce: str) -> str:
    """What a daemon sends with each registration, heartbeat and allocation check to show
    that it holds the cluster secret: without it, anyone who reaches the scheduler could
    register a node (and draw clients and their grants to it) or read a node's allocation
    ids (capabilities) from a heartbeat's reply.

    The MAC covers the call, the node, the time, a nonce and the message itself (``body``:
    the message serialized without its proof), so a captured proof is good for that one
    message, once (:class:`ProofGuard`), within :data:`PROOF_WINDOW_S` of when it was made.
    """
    stamp = f"{now:.6f}"
    return f"{stamp}:{nonce}:{_b64(_mac(_proven(call, node, stamp, nonce, body), secret))}"


class ProofGuard:
    """The scheduler's side of :func:`node_proof`: checks proofs and remembers the nonces
    of the ones it accepted until they are too old to be accepted anyway, so a replayed
    message (a heartbeat seen on the wire, sent again) is refused."""

    def __init__(self, secret: bytes, window: float = PROOF_WINDOW_S) -> None:
        self._secret = secret
        self._window = window
        # (node, nonce) -> when it was accepted, in that order
        self._seen: dict[tuple[str, str], float] = {}

    def check(self, call: str, node: str, body: bytes, proof: str, now: float) -> str | None:
        """Why ``proof`` does not prove ``body`` (a ``call`` of ``node``) now, or None."""
        try:
            stamp, nonce, mac_text = proof.split(":")
            when = float(stamp)
            mac = _unb64(mac_text)
        except ValueError:
            return "no proof of the cluster secret"
        if not hmac.compare_digest(
            mac, _mac(_proven(call, node, stamp, nonce, body), self._secret)
        ):
            return (
                "the proof does not match the message and this scheduler's cluster secret"
                " (another secret, or a message altered on the way)"
            )
        if not abs(now - when) <= self._window:  # NaN too
            return (
                f"the proof was made {now - when:.0f} s from the scheduler's time (more than"
                f" {self._window:g} s: a replay, or clocks apart; run NTP)"
            )
        while self._seen:  # oldest first: forget those that are past replaying anyway
            key, accepted = next(iter(self._seen.items()))
            if now - accepted <= 2 * self._window:  # its time is at least accepted - window
                break
            del self._seen[key]
        if (node, nonce) in self._seen:
            return "the proof was used before (a replayed message)"
        self._seen[node, nonce] = now
        return None


def prove(call: str, message: Message, node: str, secret: bytes, now: float) -> None:
    """Set ``message.proof`` to a fresh proof of ``message`` (a node's ``call``)."""
    proof = node_proof(call, node, message_body(message), secret, now, secrets.token_hex(16))
    message.proof = proof  # type: ignore[attr-defined]


def message_body(message: Message) -> bytes:
    """What a node proof of ``message`` covers: the message without its proof."""
    bare = type(message)()
    bare.CopyFrom(message)
    bare.ClearField("proof")
    return bare.SerializeToString(deterministic=True)


def _proven(call: str, node: str, stamp: str, nonce: str, body: bytes) -> bytes:
    """The bytes a node proof's MAC covers: each part length-prefixed, so none can spill
    into another."""
    parts = [b"gpupool node v2", call.encode(), node.encode(), stamp.encode(), nonce.encode()]
    return b"".join(len(part).to_bytes(4, "big") + part for part in [*parts, body])


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
