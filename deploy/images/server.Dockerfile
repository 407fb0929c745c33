# The scheduler and the admission webhook (CPU only): gpupool from the project's own wheel.
# Build (from the repository's root; docs/operations.md):
#   python -m pip wheel --no-deps -w dist .
#   docker build -f deploy/images/server.Dockerfile -t gpupool/server:0.1.0 .
FROM python:3.12-slim-bookworm

ARG VERSION=0.1.0
ENV PIP_NO_CACHE_DIR=1
COPY dist/gpupool-${VERSION}-py3-none-any.whl /tmp/
RUN pip install "/tmp/gpupool-${VERSION}-py3-none-any.whl" \
    && rm /tmp/gpupool-${VERSION}-py3-none-any.whl
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gpupool \
    && mkdir -p /var/lib/gpupool \
    && chown 10001:10001 /var/lib/gpupool
USER 10001:10001
VOLUME ["/var/lib/gpupool"]
EXPOSE 7000 8443 9400
# the scheduler's probe; the webhook's Deployment probes its own HTTPS port instead
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=4)"]
ENTRYPOINT ["gpupool"]
CMD ["scheduler", "--listen=0.0.0.0:7000", "--db=/var/lib/gpupool/scheduler.db", "--metrics-listen=0.0.0.0:9400"]
