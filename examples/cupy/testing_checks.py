"""cupy.testing in a plain CuPy program: passing checks pass, failing ones raise."""

import cupy as cp
import numpy as np

x = cp.arange(10, dtype=cp.float32) / 3
cp.testing.assert_allclose(x, np.arange(10, dtype=np.float32) / 3, rtol=1e-6)
cp.testing.assert_allclose(x * 3, cp.arange(10, dtype=cp.float32), atol=1e-5)
cp.testing.assert_array_equal(cp.arange(4), np.arange(4))
for check, args in (
    (cp.testing.assert_allclose, (x, x + 1e-3)),
    (cp.testing.assert_array_equal, (cp.arange(4), cp.arange(1, 5))),
):
    try:
        check(*args)
    except AssertionError:
        print(check.__name__, "raises on mismatch")
    else:
        raise AssertionError(f"{check.__name__} passed arrays that differ")
try:
    cp.arange(6).reshape(4, 2)
except ValueError:
    print("bad reshape raises ValueError")
try:
    cp.ones(3) + cp.ones(4)
except ValueError:
    print("bad broadcast raises ValueError")
print("ok")
