"""The client: sessions on remote devices, the runtime API and modules."""

from gpupool.client.context import connect, disconnect
from gpupool.client.session import STATS, Stats


def stats() -> Stats:
    """Counters of the calls, messages and round trips this process has made."""
    return STATS


__all__ = ["connect", "disconnect", "stats"]
