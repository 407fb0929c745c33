"""``cupy.testing``: NumPy's assertions, taking device arrays (copied to the host) and host ones."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpupool.cupy._creation import asnumpy
from gpupool.cupy._support import module_getattr

__getattr__ = module_getattr(__name__)


def assert_allclose(
    actual: Any,
    desired: Any,
    rtol: float = 1e-7,
    atol: float = 0,
    err_msg: str = "",
    verbose: bool = True,
) -> None:
    np.testing.assert_allclose(
        asnumpy(actual), asnumpy(desired), rtol=rtol, atol=atol, err_msg=err_msg, verbose=verbose
    )


def assert_array_equal(
    x: Any, y: Any, err_msg: str = "", verbose: bool = True, strict: bool = False
) -> None:
    np.testing.assert_array_equal(
        asnumpy(x), asnumpy(y), err_msg=err_msg, verbose=verbose, strict=strict
    )


def assert_array_almost_equal(
    x: Any, y: Any, decimal: int = 6, err_msg: str = "", verbose: bool = True
) -> None:
    np.testing.assert_array_almost_equal(
        asnumpy(x), asnumpy(y), decimal=decimal, err_msg=err_msg, verbose=verbose
    )


def assert_array_less(x: Any, y: Any, err_msg: str = "", verbose: bool = True) -> None:
    np.testing.assert_array_less(asnumpy(x), asnumpy(y), err_msg=err_msg, verbose=verbose)
