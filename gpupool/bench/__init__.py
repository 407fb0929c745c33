"""``gpupool bench``: remote against native bandwidth, latency and launch rate, in one run."""
