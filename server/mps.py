"""CUDA MPS: compute shares for fractional sessions, where the host runs it.

With the MPS control daemon running, a client's ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``
bounds the share of the GPU's SMs its contexts may use. CUDA reads it when the context is
created, so a fractional session on an MPS host gets a freshly started worker with the
variable set (warm workers already hold a context). Without MPS, sessions share a GPU by
time slicing: the fraction then bounds memory, not compute (docs/scheduler.md).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"


def running() -> bool:
    """True when an MPS control daemon runs for this host's default (or configured) pipes."""
    folder = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", DEFAULT_PIPE_DIRECTORY))
    try:
        pid = int((folder / "nvidia-cuda-mps-control.pid").read_text().strip())
        os.kill(pid, 0)
    except PermissionError:
        return True  # it runs, as another user (root, usually)
    except (OSError, ValueError):
        return False
    return True


def worker_env(fraction: float) -> dict[str, str]:
    """The environment that gives a worker ``fraction`` of the GPU's SMs under MPS."""
    return {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(max(1, math.ceil(fraction * 100)))}
