"""Random numbers and linear algebra: a plain CuPy program, checked against NumPy."""

import cupy as cp
import numpy as np

cp.random.seed(7)
first = cp.random.rand(1000)
cp.random.seed(7)
again = cp.random.rand(1000)
cp.testing.assert_array_equal(first, again)  # a seed makes a stream reproducible

rs = cp.random.RandomState(1234)
normal = rs.normal(2.0, 0.5, size=200_000)
uniform = rs.uniform(-1, 3, size=200_000)
ints = rs.randint(0, 10, size=10_000)
picks = rs.choice(5, size=1000)
assert normal.dtype == cp.float64 and ints.dtype.kind == "i"
assert abs(float(normal.mean()) - 2.0) < 0.01 and abs(float(normal.std()) - 0.5) < 0.01
assert abs(float(uniform.mean()) - 1.0) < 0.02
assert int(ints.min()) == 0 and int(ints.max()) == 9
assert set(cp.asnumpy(picks).tolist()) == {0, 1, 2, 3, 4}
for values in (cp.random.randn(3, 4), cp.random.random((3, 4)), cp.random.rand(3, 4)):
    assert values.shape == (3, 4)
assert 0 <= float(cp.random.random((3, 4)).min())
print("random ok")

rng = np.random.default_rng(0)
ha = rng.standard_normal((64, 64)) + 64 * np.eye(64)
hb = rng.standard_normal((64, 3))
a, b = cp.asarray(ha), cp.asarray(hb)
checks = {
    "dot": (cp.dot(a, b), ha @ hb),
    "matmul": (a @ a, ha @ ha),
    "inner": (cp.inner(a[0], a[1]), np.inner(ha[0], ha[1])),
    "outer": (cp.outer(a[0, :5], b[:4, 0]), np.outer(ha[0, :5], hb[:4, 0])),
    "norm": (cp.linalg.norm(a), np.linalg.norm(ha)),
    "norm_axis": (cp.linalg.norm(b, axis=0), np.linalg.norm(hb, axis=0)),
    "solve": (cp.linalg.solve(a, b), np.linalg.solve(ha, hb)),
    "f32_matmul": (
        a.astype(cp.float32) @ b.astype(cp.float32),
        ha.astype(np.float32) @ hb.astype(np.float32),
    ),
}
for name, (got, want) in checks.items():
    assert got.dtype == want.dtype and got.shape == want.shape, name
    np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-4, err_msg=name)
    print(name, got.shape, f"{float(cp.asnumpy(got).sum()):.4f}")
print("ok")
