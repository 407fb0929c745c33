"""One figure of a benchmark, as the tables, plots and JSON records show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Record:
    """One figure: ``gbps`` for a copy, ``us`` (and ``per_s``) for latency and launches, ``us``
    a small operation.

    ``ratio`` is against native (remote/native: bandwidth and launch rate as a share of
    native, latency and small operations as a multiple of it); ``link_ratio`` likewise
    against the raw link.
    """

    op: str
    transport: str
    size_bytes: int
    native: bool
    gbps: float | None = None
    us: float | None = None
    per_s: float | None = None
    ratio: float | None = None
    link_ratio: float | None = None
    # small operations (``gpupool bench ops``), per operation
    client_us: float | None = None  # the client's CPU time
    worker_us: float | None = None  # the daemon's processes' CPU time
    round_trips: float | None = None
    mallocs: float | None = None  # allocations that reached the daemon

    def to_json(self) -> dict[str, object]:
        return {key: value for key, value in asdict(self).items() if value is not None}
