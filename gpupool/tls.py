"""TLS for gRPC: the PEM files of a server (a daemon, the scheduler) and of a client.

One place for both ends, so the daemon's and the scheduler's servers are configured alike, and
every client of either (programs, the CLI, daemons registering with the scheduler) trusts
them the same way: ``GPUPOOL_TLS_CA`` (the CA that signed the servers' certificates), and
``GPUPOOL_TLS_CERT``/``GPUPOOL_TLS_KEY`` where a server requires client certificates.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ENV_TLS = ("GPUPOOL_TLS_CA", "GPUPOOL_TLS_CERT", "GPUPOOL_TLS_KEY")


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a server's TLS: its certificate and key, and, to require client
    certificates, the CA that signs them."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        pair = (self.key.read_bytes(), self.cert.read_bytes())
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials([pair], ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class TLS:
    """PEM files for a client's TLS: the CA that signed the servers' certificates, and this
    client's own certificate and key where the servers require one."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_env(cls) -> TLS | None:
        ca, cert, key = (os.environ.get(name) for name in ENV_TLS)
        if not ca:
            return None
        return cls(Path(ca), Path(cert) if cert else None, Path(key) if key else None)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca.read_bytes(),
            self.key.read_bytes() if self.key else None,
            self.cert.read_bytes() if self.cert else None,
        )


def channel(target: str, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
    """A channel to ``target``: with TLS where ``GPUPOOL_TLS_CA`` is set, else plain text."""
    tls = TLS.from_env()
    if tls is None:
        return grpc.insecure_channel(target, options)
    return grpc.secure_channel(target, tls.credentials(), options)
