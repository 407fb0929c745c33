"""The exceptions gpupool raises, on both sides of the wire.

The tree is shallow on purpose (httpx, ucx-py): one base class, and leaves that mirror CuPy's
so that code written against CuPy catches the same things. CUDA failures keep CUDA's error name
(``cudaErrorIllegalAddress``) from the daemon to the client: the name is what travels on the
wire, the numeric status is looked up here.
"""

from __future__ import annotations

import numpy as np

# The CUDA runtime's error codes for the names gpupool reports (cuda_runtime_api.h, CUDA 12/13).
CUDA_ERROR_CODES: dict[str, int] = {
    "cudaSuccess": 0,
    "cudaErrorInvalidValue": 1,
    "cudaErrorMemoryAllocation": 2,
    "cudaErrorInitializationError": 3,
    "cudaErrorInvalidConfiguration": 9,
    "cudaErrorDevicesUnavailable": 46,
    "cudaErrorInvalidDevicePointer": 17,
    "cudaErrorInvalidMemcpyDirection": 21,
    "cudaErrorNoDevice": 100,
    "cudaErrorInvalidDevice": 101,
    "cudaErrorInvalidKernelImage": 200,
    "cudaErrorNoKernelImageForDevice": 209,
    "cudaErrorInvalidPtx": 218,
    "cudaErrorInvalidSource": 300,
    "cudaErrorInvalidResourceHandle": 400,
    "cudaErrorSymbolNotFound": 500,
    "cudaErrorNotReady": 600,
    "cudaErrorIllegalAddress": 700,
    "cudaErrorLaunchOutOfResources": 701,
    "cudaErrorAssert": 710,
    "cudaErrorHardwareStackError": 714,
    "cudaErrorIllegalInstruction": 715,
    "cudaErrorMisalignedAddress": 716,
    "cudaErrorInvalidPc": 718,
    "cudaErrorLaunchFailure": 719,
    "cudaErrorNotPermitted": 800,
    "cudaErrorNotSupported": 801,
    "cudaErrorUnknown": 999,
}

# Errors after which CUDA refuses every later call in the same context: the worker that saw
# one is retired (design.md, process model).
STICKY_ERRORS = frozenset(
    {
        "cudaErrorIllegalAddress",
        "cudaErrorAssert",
        "cudaErrorHardwareStackError",
        "cudaErrorIllegalInstruction",
        "cudaErrorMisalignedAddress",
        "cudaErrorInvalidPc",
        "cudaErrorLaunchFailure",
    }
)


class GpupoolError(Exception):
    """Base class of every error gpupool raises on purpose."""


class CUDARuntimeError(GpupoolError):
    """A CUDA call failed, locally or on a daemon; mirrors ``cupy.cuda.runtime.CUDARuntimeError``.

    ``status`` is CUDA's numeric code and ``name`` its symbolic name; the message starts with the
    name, as CuPy's does, so that logs and tracebacks show it.
    """

    def __init__(self, name: str, detail: str = "") -> None:
        self.name = name
        self.status = CUDA_ERROR_CODES.get(name, CUDA_ERROR_CODES["cudaErrorUnknown"])
        self.detail = detail
        super().__init__(f"{name}: {detail}" if detail else name)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.name, self.detail)

    @property
    def sticky(self) -> bool:
        """True when CUDA leaves the context unusable after this error."""
        return self.name in STICKY_ERRORS


class CompileError(GpupoolError):
    """CUDA source did not compile on the daemon; mirrors ``cupy.cuda.compiler.CompileException``.

    ``log`` holds the compiler's own output.
    """

    def __init__(self, message: str, log: str = "") -> None:
        self.message = message
        self.log = log
        super().__init__(f"{message}\n{log}" if log else message)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.message, self.log)


class ConnectionLost(GpupoolError):
    """The connection to a daemon broke; always chained to the transport's own error.

    Its kinds, told apart as httpx tells them (``gpupool.transport.failures`` translates a
    transport's own errors into them, in one place): :class:`ConnectError`,
    :class:`ReadError`, :class:`WriteError` and :class:`ConnectionTimeout`.
    """


class ConnectError(ConnectionLost):
    """No connection could be opened (refused, no route, a name that does not resolve)."""


class ReadError(ConnectionLost):
    """Receiving from the daemon failed: the connection was reset or ended mid-reply."""


class WriteError(ConnectionLost):
    """Sending to the daemon failed: the connection was reset or closed."""


class ConnectionTimeout(ConnectionLost):
    """The daemon, or the session's worker, did not answer within the liveness timeout
    (``GPUPOOL_TIMEOUT``): stopped, hung, or cut off by the network."""


class AllocationError(GpupoolError):
    """The pool scheduler refused a request; ``reason`` says why, ``code`` which kind.

    ``code`` is the gRPC status name: ``RESOURCE_EXHAUSTED`` (no room now, nor within the
    wait), ``FAILED_PRECONDITION`` (can never fit this pool), ``INVALID_ARGUMENT``,
    ``NOT_FOUND`` (the allocation was released or has expired), ``UNAVAILABLE`` (no scheduler).
    """

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.code, self.reason)


# Python exceptions an array function on the daemon may raise, by the name that travels; the
# client raises the same type (CuPy raises NumPy's and Python's own types for these).
ARRAY_ERRORS: dict[str, type[Exception]] = {
    "LinAlgError": np.linalg.LinAlgError,
    "AxisError": np.exceptions.AxisError,
    "IndexError": IndexError,
    "ValueError": ValueError,
    "TypeError": TypeError,
    "ZeroDivisionError": ZeroDivisionError,
    "OverflowError": OverflowError,
    "FloatingPointError": FloatingPointError,
    "ArithmeticError": ArithmeticError,
    "RuntimeError": RuntimeError,  # PyTorch's operators raise it for their arguments
}


class ArrayFunctionError(GpupoolError):
    """An array function refused its arguments on the daemon (a bad index, a singular matrix).

    Carries the Python exception's type by name; :meth:`exception` is what the client raises.
    """

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.message = message
        super().__init__(f"{name}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.name, self.message)

    @classmethod
    def of(cls, exc: Exception) -> ArrayFunctionError:
        """The wire form of ``exc``: its nearest type that the client knows."""
        name = next(kind.__name__ for kind in type(exc).__mro__ if kind.__name__ in ARRAY_ERRORS)
        return cls(name, str(exc))

    def exception(self) -> Exception:
        return ARRAY_ERRORS.get(self.name, RuntimeError)(self.message)
