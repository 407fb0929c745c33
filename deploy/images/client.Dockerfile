# A base for pods that run on pool GPUs: gpupool's client from the project's own wheel, no CUDA.
# Build FROM it with your program and its packages; the admission webhook wraps the pod's
# command in `gpupool run`. Build (from the repository's root; docs/operations.md):
#   python -m pip wheel --no-deps -w dist .
#   docker build -f deploy/images/client.Dockerfile -t gpupool/client:0.1.0 .
FROM python:3.12-slim-bookworm

ARG VERSION=0.1.0
ENV PIP_NO_CACHE_DIR=1
COPY dist/gpupool-${VERSION}-py3-none-any.whl /tmp/
RUN pip install "/tmp/gpupool-${VERSION}-py3-none-any.whl" \
    && rm /tmp/gpupool-${VERSION}-py3-none-any.whl
RUN useradd --uid 10001 --user-group --create-home --shell /bin/bash gpupool
USER 10001:10001
WORKDIR /home/gpupool
# a program, not a service: nothing to probe
HEALTHCHECK NONE
ENTRYPOINT ["gpupool", "run", "--"]
CMD ["python", "-c", "import gpupool.cupy as cp; print(float(cp.arange(10).sum()))"]
