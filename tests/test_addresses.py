"""Listen addresses as people write them, IPv6 included, and a daemon on an IPv6 loopback."""

from __future__ import annotations

import socket

import numpy as np
import pytest

import gpupool
from gpupool import runtime as rt
from gpupool.addresses import ListenHosts, join_host_port, split_host_port
from gpupool.server.daemon import start_daemon


def test_hosts_keep_their_brackets_only_inside_addresses() -> None:
    assert split_host_port("[::1]:7001") == ("::1", "7001")
    assert split_host_port("gpu1:7001") == ("gpu1", "7001")
    assert join_host_port("::1", 7001) == "[::1]:7001"
    assert join_host_port("10.0.0.2", 7001) == "10.0.0.2:7001"
    assert ListenHosts.of("[::1]:0") == ListenHosts("::1", "::1", "::1")
    wildcard = ListenHosts.of("0.0.0.0:7001")
    assert (wildcard.bind, wildcard.local) == ("0.0.0.0", "127.0.0.1")
    assert wildcard.public == socket.getfqdn() and not wildcard.loopback
    assert ListenHosts.of("[::]:7001").local == "::1"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_a_daemon_on_ipv6_loopback_advertises_and_serves_bracketed_addresses() -> None:
    daemon = start_daemon(listen="[::1]:0", backend="emu", emu_devices=1, log_level="warning")
    try:
        assert daemon.address == f"[::1]:{daemon.port}"
        assert f"grpc://[::1]:{daemon.port}" in daemon.endpoints
        assert any(url.startswith("tcp://[::1]:") for url in daemon.endpoints)
        for transport in ("grpc", "tcp"):
            gpupool.connect(daemon.address, transport=transport)
            host = np.arange(1 << 16, dtype=np.float32)
            back = np.empty_like(host)
            ptr = rt.malloc(host.nbytes)
            rt.memcpy(ptr, host.ctypes.data, host.nbytes, rt.memcpyHostToDevice)
            rt.memcpy(back.ctypes.data, ptr, host.nbytes, rt.memcpyDeviceToHost)
            assert np.array_equal(back, host)
            gpupool.disconnect()
    finally:
        gpupool.disconnect()
        daemon.stop()
