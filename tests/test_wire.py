"""Kernel scalars on the wire: every CUDA scalar type survives the trip, whatever its byte order."""

from __future__ import annotations

import numpy as np
import pytest

from gpupool.client.module import kernel_arg
from gpupool.proto import gpupool_pb2 as pb
from gpupool.proto.scalars import DTYPE_OF, from_scalar, to_scalar


@pytest.mark.parametrize("dtype", list(DTYPE_OF.values()), ids=str)
def test_scalars_round_trip(dtype: np.dtype) -> None:
    value = np.array(3, dtype)[()]
    back = from_scalar(to_scalar(value))
    assert back.dtype == dtype and back == value


def test_other_byte_orders_travel_as_little_endian() -> None:
    swapped = np.array(0x01020304, ">i4")[()]
    assert to_scalar(swapped).data == (0x01020304).to_bytes(4, "little")


def test_python_values_convert_as_cupy_converts_them() -> None:
    assert kernel_arg(-7) == (pb.INT64, (-7).to_bytes(8, "little", signed=True))
    assert kernel_arg(1.5) == (pb.FLOAT64, np.float64(1.5).tobytes())
    assert kernel_arg(True) == (pb.BOOL, b"\x01")
    assert kernel_arg(1j) == (pb.COMPLEX128, np.complex128(1j).tobytes())
    with pytest.raises(TypeError, match="unsupported kernel argument type"):
        kernel_arg("text")
    with pytest.raises(TypeError, match="unsupported kernel argument type"):
        to_scalar(np.datetime64(1, "s"))
