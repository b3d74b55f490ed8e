# docker-image-exporter container image.
#
#   make image                                     # online: deps from PyPI, python:3.12-slim base
#   make image OFFLINE=1 BASE_IMAGE=<image>        # offline: wheels prepared on the host, no network in the build
#
# BASE_IMAGE may be any glibc image with `python3` and the `venv` module (an official python:3.x-slim, or plain
# Debian bookworm with python3 + python3-venv: Debian's ensurepip bootstraps pip from its bundled wheels, so the
# base needs no pip and no network). The final stage reuses the same base, so the venv's interpreter matches.
#
# Reaching the engine: the exporter runs as uid/gid 10151. Mount the socket and add its group:
#   docker run -v /var/run/docker.sock:/var/run/docker.sock:ro --group-add "$(stat -c %g /var/run/docker.sock)" ...
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# OFFLINE=1: install only from the wheelhouse that scripts/build-image.sh put into build/wheels (no index).
ARG OFFLINE=0
# Optional extras: EXTRAS=cri adds the CRI backend (gRPC) for Kubernetes nodes without Docker (runtime.endpoint).
ARG EXTRAS=
# Baked into the package by setup.py (exporter/_build.py: `--version`, docker_exporter_build_info); the
# context has no .git to describe. The offline wheel is built on the host with the same values.
ARG REVISION=unknown
ARG CREATED=unknown
# pip and setuptools are removed from the venv at the end: nothing installs into it at run time.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    DIE_REVISION=${REVISION} \
    DIE_BUILD_DATE=${CREATED}
# .dockerignore limits the context to the package, its metadata and the wheelhouse.
COPY . /src
RUN set -eu; \
    python3 -m venv /opt/venv; \
    if [ "$OFFLINE" = 1 ]; then \
        ls /src/build/wheels/prometheus_docker_image_exporter-*.whl >/dev/null 2>&1 \
            || { echo "OFFLINE=1 but build/wheels has no project wheel: run scripts/build-image.sh" >&2; exit 1; }; \
        /opt/venv/bin/pip install --no-index --find-links /src/build/wheels prometheus-docker-image-exporter; \
    else \
        /opt/venv/bin/pip install "/src${EXTRAS:+[$EXTRAS]}"; \
    fi; \
    mkdir -p /out/etc/docker-image-exporter /out/var/lib/docker-image-exporter; \
    printf '%s\n' \
      '# Default config of the container image; mount your own over it or pass --config.file.' \
      '# docker.host is left to --docker.host / DOCKER_HOST / the default unix:///var/run/docker.sock.' \
      'poll: {interval: 30s, disk_usage_interval: 5m}' \
      'filesystem: {path: /var/lib/docker}   # mount the data root read-only here' \
      'state: {path: /var/lib/docker-image-exporter/state.json}' \
      > /out/etc/docker-image-exporter/config.yaml; \
    /opt/venv/bin/docker-image-exporter --config.check --config.file=/out/etc/docker-image-exporter/config.yaml; \
    /opt/venv/bin/python -m pip uninstall -y -q pip setuptools >/dev/null 2>&1 || true; \
    rm -rf /opt/venv/bin/pip* /opt/venv/bin/activate* /opt/venv/bin/Activate.ps1

FROM ${BASE_IMAGE}
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/docker-image-exporter/docker-image-exporter
ARG LICENSES=Apache-2.0
LABEL org.opencontainers.image.title="prometheus-docker-image-exporter" \
      org.opencontainers.image.description="Prometheus exporter and Alertmanager remediation hook for Docker images" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.documentation="${SOURCE}#readme" \
      org.opencontainers.image.licenses="${LICENSES}"
# A passwd/group entry without useradd (not every base has it). No home, no shell.
RUN set -eu; \
    grep -q '^exporter:' /etc/group || echo 'exporter:x:10151:' >> /etc/group; \
    grep -q '^exporter:' /etc/passwd \
      || echo 'exporter:x:10151:10151:docker-image-exporter:/nonexistent:/usr/sbin/nologin' >> /etc/passwd
COPY --from=build /opt/venv /opt/venv
COPY --from=build /out/ /
RUN chown 10151:10151 /var/lib/docker-image-exporter && chmod 0750 /var/lib/docker-image-exporter
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10151:10151
WORKDIR /var/lib/docker-image-exporter
EXPOSE 10151
# No curl in slim images: probe with the venv's Python. When you change --web.listen-address, set
# HEALTHCHECK_URL to match (e.g. -e HEALTHCHECK_URL=http://127.0.0.1:9999/-/healthy).
ENV HEALTHCHECK_URL=http://127.0.0.1:10151/-/healthy
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4).status == 200 else 1)"]
ENTRYPOINT ["docker-image-exporter"]
CMD ["--config.file=/etc/docker-image-exporter/config.yaml"]
