"""``HOST:PORT`` as people write it (an IPv6 host in brackets) and as sockets take it.

One place for the daemon, the scheduler and the transports: a listen address becomes the host
to bind, the host a client on this machine dials, and the host to advertise to other machines.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # -> this host's loopback
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def split_host_port(address: str) -> tuple[str, str]:
    """``("::1", "7001")`` from ``"[::1]:7001"``; the host without brackets."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def join_host_port(host: str, port: int | str) -> str:
    """``"[::1]:7001"`` from ``("::1", 7001)``: IPv6 hosts go in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ListenHosts:
    """The hosts of a listen address: what to bind, dial locally, and advertise."""

    bind: str
    local: str
    public: str

    @classmethod
    def of(cls, listen: str) -> ListenHosts:
        host, _ = split_host_port(listen)
        if host in WILDCARDS:
            return cls(host or "0.0.0.0", WILDCARDS[host], socket.getfqdn())
        return cls(host, host, host)

    @property
    def loopback(self) -> bool:
        return self.bind in LOOPBACK
