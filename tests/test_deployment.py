"""The pieces an operator's deployment relies on: the health check, the event loop choice, the docs' files."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from ocpp_addon import app as app_module
from ocpp_addon.central_system import HEALTH_PATH

from .cluster import TEMPLATES, haproxy_binary, render
from .conftest import TIMEOUT


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: lb\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status = int(head.split(b" ", 2)[1])
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    writer.close()
    return status, body.decode()


async def test_health_check_answers_200_while_mqtt_is_connected_and_503_without_it(service, broker) -> None:
    port = service.config["ocpp"]["port"]
    assert await _get(port, HEALTH_PATH) == (200, "ok\n")
    await broker.stop()
    await asyncio.wait_for(service.app.mqtt.disconnected.wait(), TIMEOUT)
    status, body = await _get(port, HEALTH_PATH)
    assert (status, body) == (503, "MQTT broker not connected\n")


def test_health_path_is_no_charge_point_id() -> None:
    from ocpp_addon.central_system import charger_id_from_path

    assert charger_id_from_path(HEALTH_PATH, "") is None
    assert charger_id_from_path(HEALTH_PATH, "/ocpp") is None


@pytest.mark.parametrize(("setting", "expected"), [("asyncio", "asyncio"), ("nonsense", None), ("", None)])
def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch, setting: str, expected: str | None) -> None:
    monkeypatch.setenv(app_module.EVENT_LOOP_VARIABLE, setting)
    name, factory = app_module.event_loop_factory()
    try:
        import uvloop  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    if expected is None:  # auto: uvloop when installed
        expected = "uvloop" if installed else "asyncio"
    assert name == expected
    assert (factory is None) == (name == "asyncio")


def test_docs_cluster_files_are_valid_haproxy_and_complete(tmp_path: Path) -> None:
    haproxy = haproxy_binary()
    if haproxy is None:
        pytest.fail("haproxy not installed: bash scripts/ensure-cluster.sh installs it (scripts/test.sh does)")
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(render("haproxy.cfg", {
        "OCPP_BIND": "127.0.0.1:19000", "INSTANCE_SERVERS": "server a 127.0.0.1:19001 check",
        "NODE1": "127.0.0.1:11883", "NODE2": "127.0.0.1:11884",
        "MQTT_NODE1_BIND": "127.0.0.1:11885", "MQTT_NODE2_BIND": "127.0.0.1:11886"}))
    check = subprocess.run([haproxy, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    for name in ("mosquitto-node1.conf", "mosquitto-node2.conf", "compose.yaml"):
        assert (TEMPLATES / name).exists()
