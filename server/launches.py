"""Prepared launches: a launch configuration checked once, then launched again and again.

Programs launch the same kernel with the same grid, block and stream over and over, changing
only argument values. The session keeps each configuration it has seen, keyed by the bytes of
its ``LaunchConfig``, prepared: its grid and block checked against the device's limits, its
function and stream looked up, its arguments' layout worked out, and whatever the backend
can do ahead of time done. A repeated launch then costs a dictionary lookup and the
conversion of its argument bytes. Equal bytes always decode to the same configuration, so a
prepared launch is never used for another grid, block, stream or argument list.

A configuration that fails its checks is not kept: the next launch with it is checked (and
refused) again, with the same error as the first.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError

from gpupool.errors import CUDARuntimeError
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.kernel_args import Signature
from gpupool.server.backends.base import Backend, DeviceInfo, check_launch

MAX_PREPARED = 1024  # configurations kept; the oldest goes first past this


class _Prepared:
    __slots__ = ("launch", "size")

    def __init__(self, launch: Callable[[bytes], None], size: int) -> None:
        self.launch = launch
        self.size = size


class PreparedLaunches:
    """The prepared launches of one session.

    ``function`` and ``stream`` look a handle up (raising the session's error for one it
    does not have); :meth:`forget` must be called whenever either loses a handle, since a
    prepared launch holds what they returned.
    """

    def __init__(
        self,
        backend: Backend,
        device: DeviceInfo,
        function: Callable[[int], object],
        stream: Callable[[int], object],
    ) -> None:
        self._backend = backend
        self._limits = device.max_threads_per_block, device.shared_memory_per_block
        self._function = function
        self._stream = stream
        self._prepared: dict[bytes, _Prepared] = {}

    def launch(self, call: pb.Launch) -> None:
        """Launch ``call``, preparing its configuration on first sight."""
        prepared = self._prepared.get(call.config)
        if prepared is None:
            prepared = self._prepare(call.config)
        data = call.arg_data
        if len(data) != prepared.size:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue",
                f"launch carries {len(data)} bytes of arguments; their types take {prepared.size}",
            )
        prepared.launch(data)

    def forget(self) -> None:
        """Drop every prepared launch (a function or a stream went away)."""
        self._prepared.clear()

    def _prepare(self, raw: bytes) -> _Prepared:
        """Check a configuration, in the order an unprepared launch was always checked in:
        the grid and block first, then the arguments, the function, the stream."""
        try:
            config = pb.LaunchConfig.FromString(raw)
        except DecodeError:
            raise CUDARuntimeError(
                "cudaErrorInvalidValue", "malformed launch configuration"
            ) from None
        grid = (config.grid.x, config.grid.y, config.grid.z)
        block = (config.block.x, config.block.y, config.block.z)
        check_launch(grid, block, config.shared_mem, *self._limits)
        try:
            signature = Signature.parse(config.arg_types)
        except ValueError as exc:
            raise CUDARuntimeError("cudaErrorInvalidValue", str(exc)) from exc
        function = self._function(config.function)
        stream = self._stream(config.stream)
        launch = self._backend.prepare_launch(
            function, grid, block, config.shared_mem, stream, signature
        )
        if len(self._prepared) >= MAX_PREPARED:
            del self._prepared[next(iter(self._prepared))]
        prepared = self._prepared[raw] = _Prepared(launch, signature.size)
        return prepared
