"""A launch's arguments on the wire: a type code each, and their bytes back to back.

``LaunchConfig.arg_types`` holds one ``ScalarType`` code an argument and ``Launch.arg_data``
their little-endian bytes, packed. Bytes rather than a message an argument: a launch is the
call programs make most often, and the daemon converts a launch's values from a layout it
works out once per configuration (:class:`Signature`) instead of decoding and checking a
message for every argument of every launch.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.scalars import WIRE_DTYPE_OF

POINTER = pb.UINT64  # a device address: the 8 bytes cuLaunchKernel reads for a pointer


@dataclass(frozen=True)
class Signature:
    """Where each argument of a launch lies in its ``arg_data``, and what it is."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    dtypes: tuple[np.dtype, ...]  # little-endian, as the wire has them
    size: int  # the bytes every launch of this signature carries

    @classmethod
    def parse(cls, types: bytes) -> Signature:
        """The signature ``arg_types`` gives; ValueError naming an argument of no known type."""
        dtypes = []
        for index, code in enumerate(types):
            dtype = WIRE_DTYPE_OF.get(code)
            if dtype is None:
                raise ValueError(f"argument {index} has no known type (code {code})")
            dtypes.append(dtype)
        sizes = tuple(dtype.itemsize for dtype in dtypes)
        ends = tuple(accumulate(sizes, initial=0))
        return cls(ends[:-1], sizes, tuple(dtypes), ends[-1])

    def values(self, data: bytes) -> list[np.generic]:
        """The arguments in ``data`` as NumPy scalars of their types, bit for bit (in the
        host's byte order, as NumPy's scalars always are)."""
        return [
            np.frombuffer(data, dtype, 1, offset)[0]
            for dtype, offset in zip(self.dtypes, self.offsets, strict=True)
        ]
