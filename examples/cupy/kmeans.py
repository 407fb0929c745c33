"""k-means clustering as people write it in CuPy: broadcasting, argmin, boolean masks, len().

Runs as is under real CuPy, or on remote GPUs with ``gpupool run -- python kmeans.py``. The
same function runs on NumPy and on CuPy, and every step's results must agree.
"""

import cupy as cp
import numpy as np

rng = np.random.default_rng(7)
true_centers = np.array([[0.0, 0.0], [5.0, 5.0], [-4.0, 6.0]], dtype=np.float32)
points = np.concatenate(
    [c + rng.standard_normal((200, 2)).astype(np.float32) for c in true_centers]
)
k = 3


def kmeans(xp, points, centroids, iterations=20):
    steps = 0
    while steps < iterations:
        steps += 1
        distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        labels = distances.argmin(axis=1)
        new = xp.zeros_like(centroids)
        for j in range(k):
            members = points[labels == j]  # a boolean mask: its size depends on the data
            new[j] = members.mean(axis=0) if len(members) else centroids[j]
        shift = float(xp.abs(new - centroids).max())
        centroids = new
        if shift < 1e-6:
            break
    inertia = ((points - centroids[labels]) ** 2).sum()
    return centroids, labels, inertia, steps


got_centroids, got_labels, got_inertia, got_steps = kmeans(
    cp, cp.asarray(points), cp.asarray(points[:3])
)
centroids, labels, inertia, steps = kmeans(np, points, points[:3])
assert got_centroids.dtype == centroids.dtype and got_labels.dtype == labels.dtype
cp.testing.assert_allclose(got_centroids, centroids, rtol=1e-5, atol=1e-6)
cp.testing.assert_array_equal(got_labels, labels)
assert got_steps == steps
assert abs(float(got_inertia) - float(inertia)) <= 1e-4 * float(inertia)
sizes = [int((got_labels == j).sum()) for j in range(k)]
print("converged after", got_steps, "steps; cluster sizes", sizes)
print("ok")
