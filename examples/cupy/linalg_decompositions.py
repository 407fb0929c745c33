"""Linear algebra: least squares, decompositions and tensor products.

A plain CuPy program, checked against NumPy.
"""

import cupy as cp
import numpy as np

rng = np.random.default_rng(5)
design = rng.standard_normal((200, 4))
truth = np.array([1.5, -2.0, 0.5, 3.0])
target = design @ truth + 0.01 * rng.standard_normal(200)
a, b = cp.asarray(design), cp.asarray(target)

solution, residuals, rank, singular = cp.linalg.lstsq(a, b, rcond=None)
want = np.linalg.lstsq(design, target, rcond=None)
np.testing.assert_allclose(cp.asnumpy(solution), want[0], rtol=1e-8)
np.testing.assert_allclose(cp.asnumpy(residuals), want[1], rtol=1e-6)
assert int(rank) == want[2]
print("lstsq", np.round(cp.asnumpy(solution), 2).tolist(), "rank", int(rank))

# the same fit three other ways: normal equations (Cholesky), QR, and the pseudo-inverse
gram = a.T @ a
lower = cp.linalg.cholesky(gram)
np.testing.assert_allclose(cp.asnumpy(lower @ lower.T), cp.asnumpy(gram), rtol=1e-10)
q, r = cp.linalg.qr(a)
via_qr = cp.linalg.solve(r, q.T @ b)
via_pinv = cp.linalg.pinv(a) @ b
for name, fit in (("qr", via_qr), ("pinv", via_pinv)):
    np.testing.assert_allclose(cp.asnumpy(fit), want[0], rtol=1e-8, err_msg=name)

u, s, vh = cp.linalg.svd(a, full_matrices=False)
np.testing.assert_allclose(cp.asnumpy(s), np.linalg.svd(design, compute_uv=False), rtol=1e-10)
np.testing.assert_allclose(cp.asnumpy((u * s) @ vh), design, atol=1e-10)
print("singular values", np.round(cp.asnumpy(s), 3).tolist())
w, v = cp.linalg.eigh(gram)
np.testing.assert_allclose(cp.asnumpy(w), np.linalg.eigvalsh(design.T @ design), rtol=1e-10)
sign, logdet = cp.linalg.slogdet(gram)
print(f"condition {float(cp.linalg.cond(gram)):.2f}, log det {float(logdet):.3f}")

# tensor products
x = cp.asarray(rng.standard_normal((3, 4, 5)))
y = cp.asarray(rng.standard_normal((5, 4)))
np.testing.assert_allclose(
    cp.asnumpy(cp.einsum("ijk,kj->i", x, y)), np.einsum("ijk,kj->i", cp.asnumpy(x), cp.asnumpy(y))
)
np.testing.assert_allclose(
    cp.asnumpy(cp.tensordot(x, y, axes=([1, 2], [1, 0]))),
    np.tensordot(cp.asnumpy(x), cp.asnumpy(y), axes=([1, 2], [1, 0])),
)
block = cp.kron(cp.eye(2), cp.asarray([[1.0, 2.0], [3.0, 4.0]]))
assert block.shape == (4, 4) and float(block.sum()) == 20.0
power = cp.linalg.matrix_power(cp.asarray([[1.0, 1.0], [1.0, 0.0]]), 10)
print("fibonacci", cp.asnumpy(power)[0].astype(int).tolist())
print("ok")
