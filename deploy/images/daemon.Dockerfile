# The node daemon on a GPU: CUDA's runtime, CuPy and gpupool from the project's own wheel.
# Build (from the repository's root; docs/operations.md):
#   python -m pip wheel --no-deps -w dist .
#   docker build -f deploy/images/daemon.Dockerfile -t gpupool/daemon:0.1.0 .
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ARG VERSION=0.1.0
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/gpupool/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv g++ \
    && rm -rf /var/lib/apt/lists/*
COPY dist/gpupool-${VERSION}-py3-none-any.whl /tmp/
# [gpu]: CuPy for CUDA 13 and the NVML bindings; g++ stays for the emulator backend
RUN python3 -m venv /opt/gpupool \
    && /opt/gpupool/bin/pip install "/tmp/gpupool-${VERSION}-py3-none-any.whl[gpu]" \
    && rm /tmp/gpupool-${VERSION}-py3-none-any.whl
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gpupool
USER 10001:10001
EXPOSE 7001 9400
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=4)"]
ENTRYPOINT ["gpupool"]
CMD ["daemon", "--listen=0.0.0.0:7001", "--backend=auto", "--metrics-listen=0.0.0.0:9400"]
