"""``gpupool.runtime``: the CUDA runtime API on remote devices (see ``gpupool.client.runtime``)."""

from gpupool.client.runtime import *  # noqa: F403
from gpupool.client.runtime import __all__ as __all__
