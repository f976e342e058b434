# The Home Assistant app (add-on) image. The Supervisor builds it on install; BUILD_FROM is the
# Home Assistant Python base image (Alpine, s6-overlay v3 as /init, bashio). Supervisors before 2026.04
# take it from build.yaml instead (keep both on the same tag). The Supervisor adds io.hass.url from
# config.yaml's url. tests/test_image.py builds and runs this file unchanged.
ARG BUILD_FROM=ghcr.io/home-assistant/base-python:3.13-alpine3.23
FROM ${BUILD_FROM}

ARG BUILD_VERSION=0.1.0
LABEL \
    io.hass.name="OCPP Central System" \
    io.hass.description="Connect OCPP 1.6J EV chargers to Home Assistant over MQTT, with a charging-limit slider" \
    io.hass.version="${BUILD_VERSION}" \
    io.hass.type="app" \
    io.hass.arch="aarch64|amd64" \
    org.opencontainers.image.title="OCPP Central System" \
    org.opencontainers.image.version="${BUILD_VERSION}" \
    org.opencontainers.image.licenses="MIT"

# The package plus its dependencies at the versions the test suite ran with (requirements.lock), with
# the [fast] extra: uvloop, 6-11% less CPU per OCPP message (musllinux wheels for both arches).
COPY requirements.lock pyproject.toml README.md /tmp/ocpp_addon/
COPY ocpp_addon /tmp/ocpp_addon/ocpp_addon
RUN pip install --no-cache-dir --constraint /tmp/ocpp_addon/requirements.lock "/tmp/ocpp_addon[fast]" \
    && rm -rf /tmp/ocpp_addon

# s6-overlay's /init (the base image's ENTRYPOINT; config.yaml has init: false) runs CMD with the
# container environment, so SUPERVISOR_TOKEN switches the service to app mode (/data/options.json,
# MQTT from the Supervisor). When the service exits, the container stops with its exit code.
# On stop, give it time to close charger connections and publish 'offline' before SIGKILL.
ENV S6_KILL_GRACETIME=8000
EXPOSE 9000/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 9000), 3).close()"]
CMD ["python3", "-m", "ocpp_addon"]
