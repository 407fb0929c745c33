"""Signals and statistics: FFT filtering, order statistics, histograms, sets and searching.

A plain CuPy program, checked against NumPy.
"""

import cupy as cp
import numpy as np

rng = np.random.default_rng(3)
t = np.linspace(0, 1, 512, endpoint=False)
clean = np.sin(2 * np.pi * 5 * t) + 0.5 * np.sin(2 * np.pi * 12 * t)
noisy = clean + 0.4 * rng.standard_normal(t.size)

# low-pass filter: keep the frequencies under 20 Hz
signal = cp.asarray(noisy)
spectrum = cp.fft.rfft(signal)
freqs = cp.fft.rfftfreq(signal.size, d=1 / 512)
filtered = cp.fft.irfft(spectrum * (freqs < 20), n=signal.size)
want = np.fft.irfft(np.fft.rfft(noisy) * (np.fft.rfftfreq(t.size, d=1 / 512) < 20), n=t.size)
np.testing.assert_allclose(cp.asnumpy(filtered), want, atol=1e-10)
error = float(cp.sqrt(((filtered - cp.asarray(clean)) ** 2).mean()))
print(f"filtered rms error {error:.3f}")

# smoothing, derivatives, order statistics
smooth = cp.convolve(signal, cp.ones(9) / 9, mode="same")
slope = cp.gradient(smooth, float(t[1] - t[0]))
np.testing.assert_allclose(cp.asnumpy(smooth), np.convolve(noisy, np.ones(9) / 9, "same"))
np.testing.assert_allclose(cp.asnumpy(slope), np.gradient(cp.asnumpy(smooth), t[1] - t[0]))
q = cp.quantile(signal, cp.asarray([0.1, 0.5, 0.9]))
np.testing.assert_allclose(cp.asnumpy(q), np.quantile(noisy, [0.1, 0.5, 0.9]))
print("quantiles", np.round(cp.asnumpy(q), 3).tolist())
print(
    f"median {float(cp.median(signal)):.3f}, 95th percentile {float(cp.percentile(signal, 95)):.3f}"
)

# histograms and counts
counts, edges = cp.histogram(signal, bins=8, range=(-2, 2))
want_counts, want_edges = np.histogram(noisy, bins=8, range=(-2, 2))
assert cp.asnumpy(counts).tolist() == want_counts.tolist()
np.testing.assert_allclose(cp.asnumpy(edges), want_edges)
print("histogram", cp.asnumpy(counts).tolist())
levels = cp.digitize(signal, cp.asarray([-1.0, 0.0, 1.0]))
assert (
    cp.asnumpy(cp.bincount(levels)).tolist()
    == np.bincount(np.digitize(noisy, [-1.0, 0.0, 1.0])).tolist()
)

# sets, searching, NaN-aware statistics
labels = cp.asarray(rng.integers(0, 6, 100))
values, index, inverse, freq = cp.unique(
    labels, return_index=True, return_inverse=True, return_counts=True
)
assert cp.asnumpy(values[inverse]).tolist() == cp.asnumpy(labels).tolist()
print("labels", cp.asnumpy(values).tolist(), "counts", cp.asnumpy(freq).tolist())
assert (
    cp.asnumpy(cp.intersect1d(labels[:10], labels[10:20])).tolist()
    == np.intersect1d(cp.asnumpy(labels[:10]), cp.asnumpy(labels[10:20])).tolist()
)
ordered = cp.sort(signal)
where = cp.searchsorted(ordered, cp.asarray([-1.0, 0.0, 1.0]))
assert cp.asnumpy(where).tolist() == np.searchsorted(np.sort(noisy), [-1.0, 0.0, 1.0]).tolist()
peaks = cp.nonzero(signal > 1.5)[0]
assert cp.asnumpy(peaks).tolist() == np.nonzero(noisy > 1.5)[0].tolist()
gappy = signal.copy()
gappy[::7] = cp.nan
np.testing.assert_allclose(float(cp.nanmean(gappy)), np.nanmean(cp.asnumpy(gappy)))
np.testing.assert_allclose(float(cp.nanstd(gappy)), np.nanstd(cp.asnumpy(gappy)))
print(f"peaks {int(peaks.size)}, nan-mean {float(cp.nanmean(gappy)):.4f}")
print("ok")
