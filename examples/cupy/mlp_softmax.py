"""A two-layer MLP with softmax cross-entropy, trained by hand-written backprop in CuPy.

Matmuls, broadcasting bias adds, ReLU masks, a max-shifted softmax, fancy indexing of the
labels' probabilities (and a fancy-index setitem for the one-hot gradient), in-place updates.
The same function runs on NumPy; losses and weights must agree with it.
"""

import cupy as cp
import numpy as np

rng = np.random.default_rng(3)
n, d, h, c = 256, 10, 32, 4
x = rng.standard_normal((n, d)).astype(np.float32)
y = rng.integers(0, c, n)
params = [
    (rng.standard_normal((d, h)) * 0.1).astype(np.float32),
    np.zeros(h, np.float32),
    (rng.standard_normal((h, c)) * 0.1).astype(np.float32),
    np.zeros(c, np.float32),
]


def train(xp, x, y, params, steps=30, lr=0.5):
    w1, b1, w2, b2 = (p.copy() for p in params)
    rows = xp.arange(len(y))
    losses = []
    for _ in range(steps):
        z1 = x @ w1 + b1
        a1 = xp.maximum(z1, 0)
        logits = a1 @ w2 + b2
        logits -= logits.max(axis=1, keepdims=True)
        e = xp.exp(logits)
        p = e / e.sum(axis=1, keepdims=True)
        losses.append(-xp.log(p[rows, y] + 1e-9).mean())
        grad = p.copy()
        grad[rows, y] -= 1
        grad /= len(y)
        gz1 = (grad @ w2.T) * (z1 > 0)
        w2 -= lr * (a1.T @ grad)
        b2 -= lr * grad.sum(axis=0)
        w1 -= lr * (x.T @ gz1)
        b1 -= lr * gz1.sum(axis=0)
    accuracy = (p.argmax(axis=1) == y).mean()
    return xp.stack(losses), accuracy, w1


losses, accuracy, w1 = train(cp, cp.asarray(x), cp.asarray(y), [cp.asarray(p) for p in params])
want_losses, want_accuracy, want_w1 = train(np, x, y, params)
assert losses.dtype == want_losses.dtype == np.float32
cp.testing.assert_allclose(losses, want_losses, rtol=1e-4)
cp.testing.assert_allclose(w1, want_w1, rtol=2e-3, atol=1e-4)
assert abs(float(accuracy) - float(want_accuracy)) <= 2 / n
assert float(losses[-1]) < float(losses[0])
print("loss fell over", len(losses), "steps")
print("ok")
