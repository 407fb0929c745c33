"""Kernel scalar types: NumPy dtypes on either side of the wire, ``ScalarType`` on it."""

from __future__ import annotations

import sys

import numpy as np

from gpupool.proto import gpupool_pb2 as pb

DTYPE_OF: dict[int, np.dtype] = {
    pb.BOOL: np.dtype(np.bool_),
    pb.INT8: np.dtype(np.int8),
    pb.UINT8: np.dtype(np.uint8),
    pb.INT16: np.dtype(np.int16),
    pb.UINT16: np.dtype(np.uint16),
    pb.INT32: np.dtype(np.int32),
    pb.UINT32: np.dtype(np.uint32),
    pb.INT64: np.dtype(np.int64),
    pb.UINT64: np.dtype(np.uint64),
    pb.FLOAT16: np.dtype(np.float16),
    pb.FLOAT32: np.dtype(np.float32),
    pb.FLOAT64: np.dtype(np.float64),
    pb.COMPLEX64: np.dtype(np.complex64),
    pb.COMPLEX128: np.dtype(np.complex128),
}
SCALAR_TYPE_OF: dict[np.dtype, int] = {dtype: code for code, dtype in DTYPE_OF.items()}
WIRE_DTYPE_OF = {code: dtype.newbyteorder("<") for code, dtype in DTYPE_OF.items()}
_LITTLE_ENDIAN = sys.byteorder == "little"


def wire_scalar(value: np.generic) -> tuple[int, bytes]:
    """A NumPy scalar's ``ScalarType`` and little-endian bytes; TypeError for a dtype CUDA
    kernels cannot take.

    On the hot path of every launch: a scalar's own bytes are already little-endian on the
    hosts gpupool runs on, so only other byte orders are converted.
    """
    code = SCALAR_TYPE_OF.get(value.dtype)
    if code is None:
        dtype = value.dtype.newbyteorder("=")
        code = SCALAR_TYPE_OF.get(dtype)
        if code is None:
            raise TypeError(f"unsupported kernel argument type: {value.dtype}")
        value = value.astype(dtype)
    return code, value.tobytes() if _LITTLE_ENDIAN else value.byteswap().tobytes()


def to_scalar(value: np.generic) -> pb.Scalar:
    """The wire form of a NumPy scalar (an array function's operand)."""
    code, data = wire_scalar(value)
    return pb.Scalar(type=code, data=data)


def from_scalar(scalar: pb.Scalar) -> np.generic:
    """The NumPy scalar a wire scalar holds; ValueError when type and size disagree."""
    wire = WIRE_DTYPE_OF.get(scalar.type)
    if wire is None or len(scalar.data) != wire.itemsize:
        raise ValueError(f"malformed scalar argument: type {scalar.type}, {len(scalar.data)} bytes")
    value = np.frombuffer(scalar.data, wire)[0]
    return value if _LITTLE_ENDIAN else value.astype(DTYPE_OF[scalar.type])
