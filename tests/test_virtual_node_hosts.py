"""Daemons on two "hosts": network namespaces joined by a veth pair that this test creates.

The client runs on host one with a daemon beside it; the other daemon is on host two. A peer
copy and an all-reduce between their devices go worker to worker across the veth pair: the
bytes counted on host two's interface grow by the data, while the client's own payload
counters stay flat. Skipped where namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from gpupool.server.confinement import ENV_CONFINE
from tests.conftest import GPUPOOL

SUBNET = "10.231.{}.{}"


def _ip(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=20)


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[str, str, str, str]]:
    """Two namespaces (names, addresses), a veth pair between them."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2")
    tag = uuid.uuid4().hex[:6]
    one, two = f"gp1-{tag}", f"gp2-{tag}"
    net = int(tag[:2], 16) % 200 + 20
    a, b = SUBNET.format(net, 1), SUBNET.format(net, 2)
    if _ip("netns", "add", one).returncode != 0:
        pytest.skip("ip netns is not permitted here")
    try:
        _ip("netns", "add", two)
        steps = [
            ("link", "add", f"v1-{tag}", "type", "veth", "peer", "name", f"v2-{tag}"),
            ("link", "set", f"v1-{tag}", "netns", one),
            ("link", "set", f"v2-{tag}", "netns", two),
            ("-n", one, "addr", "add", f"{a}/24", "dev", f"v1-{tag}"),
            ("-n", two, "addr", "add", f"{b}/24", "dev", f"v2-{tag}"),
            ("-n", one, "link", "set", f"v1-{tag}", "up"),
            ("-n", two, "link", "set", f"v2-{tag}", "up"),
            ("-n", one, "link", "set", "lo", "up"),
            ("-n", two, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot set up the namespaces: ip {' '.join(step)}: {done.stderr}")
        yield one, two, a, b
    finally:
        _ip("netns", "del", one)
        _ip("netns", "del", two)


def _daemon(namespace: str, address: str) -> tuple[subprocess.Popen[str], str]:
    command = [
        *("ip", "netns", "exec", namespace, *GPUPOOL, "daemon"),
        *("--listen", f"{address}:0", "--backend", "emu", "--emu-devices", "2"),
        *("--emu-memory", "1GiB", "--log-level", "warning"),
    ]
    # unconfined workers: they dial their peer links themselves (tests/test_virtual_node.py)
    env = {**os.environ, ENV_CONFINE: "0"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    banner = process.stdout.readline()
    found = re.search(r" on (\S+) \(", banner)
    if found is None:
        process.kill()
        raise AssertionError(f"the daemon in {namespace} did not start: {banner!r}")
    return process, found.group(1)


def _rx_bytes(namespace: str) -> int:
    found = subprocess.run(
        ["ip", "netns", "exec", namespace, "cat", "/proc/net/dev"],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    line = next(line for line in found.splitlines() if line.strip().startswith("v2-"))
    return int(line.split(":", 1)[1].split()[0])


PROGRAM = textwrap.dedent(
    """
    import numpy as np
    import gpupool, gpupool.cupy as cp
    from gpupool.cupy.cuda import nccl
    host = np.arange(1 << 22, dtype=np.float32)  # 16 MiB
    with cp.cuda.Device(0):
        a = cp.asarray(host)
    before = gpupool.stats().bytes_sent + gpupool.stats().bytes_received
    with cp.cuda.Device(2):  # the other host's first device
        b = a.copy()
    comms = nccl.NcclCommunicator.initAll([0, 2])
    nccl.groupStart()
    for comm, x in zip(comms, (a, b)):
        with cp.cuda.Device(comm.device_id()):
            comm.allReduce(x.data.ptr, x.data.ptr, x.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    nccl.groupEnd()
    for device in (0, 2):
        with cp.cuda.Device(device):
            cp.cuda.Device().synchronize()
    moved = gpupool.stats().bytes_sent + gpupool.stats().bytes_received - before
    ok = np.array_equal(b.get(), 2 * host) and np.array_equal(a.get(), 2 * host)
    print(ok, moved)
    """
)


def test_peer_traffic_crosses_the_wire_between_hosts_not_the_client(
    hosts: tuple[str, str, str, str],
) -> None:
    one, two, a, b = hosts
    daemons = [_daemon(one, a), _daemon(two, b)]
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPOOL_")}
        env["GPUPOOL_DAEMONS"] = ",".join(address for _process, address in daemons)
        env["GPUPOOL_TRANSPORT"] = "tcp"
        received = _rx_bytes(two)
        result = subprocess.run(
            ["ip", "netns", "exec", one, sys.executable, "-c", PROGRAM],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        ok, moved = result.stdout.split()
        assert ok == "True"
        assert int(moved) == 0  # before the reads back: nothing through the client
        # host two took the 16 MiB copy and half of the all-reduce's ring, over the veth
        assert _rx_bytes(two) - received > (16 << 20) + (8 << 20)
    finally:
        for process, _address in daemons:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
