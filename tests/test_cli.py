"""The real command line: ready line, clean shutdown on SIGTERM, last will on SIGKILL, config errors."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import yaml

from ocpp_addon.broker import EmbeddedBroker
from ocpp_addon.simulator import connect

from .conftest import TIMEOUT, MqttProbe, free_port


async def start_service(config: dict, tmp_path: Path) -> tuple[asyncio.subprocess.Process, list[str]]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("CONNECTOR_NAME", "SUPERVISOR_TOKEN")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocpp_addon", "--config", str(path), stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path
    )
    lines: list[str] = []

    async def until_ready() -> None:
        assert proc.stderr is not None
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError("service exited before 'ready':\n" + "".join(lines))
            lines.append(line)
            if "ready:" in line:
                return

    await asyncio.wait_for(until_ready(), TIMEOUT)
    return proc, lines


def base_config(broker: EmbeddedBroker, tmp_path: Path) -> dict:
    return {
        "data_dir": str(tmp_path / "data"),
        "ocpp": {"host": "127.0.0.1", "port": free_port()},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "embedded_broker": False, "keepalive": 5, "password": "s3cr3t-pw", "username": "u"},
    }


async def test_ready_line_sigterm_exit_zero_and_offline(broker: EmbeddedBroker, probe: MqttProbe, tmp_path: Path) -> None:
    config = base_config(broker, tmp_path)
    proc, lines = await start_service(config, tmp_path)
    ready = lines[-1]
    assert f"ws://127.0.0.1:{config['ocpp']['port']}/<charge_point_id>" in ready and f"127.0.0.1:{broker.port}" in ready
    await probe.wait_for("ocpp/bridge/state", lambda p: p == b"online")
    sim, task = await connect(f"ws://127.0.0.1:{config['ocpp']['port']}", "wallbox-1")
    await asyncio.wait_for(sim.booted.wait(), TIMEOUT)  # stop it mid-run, not mid-boot
    await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"online")
    mark = probe.mark()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    await probe.wait_for("ocpp/bridge/state", lambda p: p == b"offline", since=mark)
    await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"offline", since=mark)
    await asyncio.wait_for(task, TIMEOUT)  # the simulator saw its socket closed cleanly
    assert sim._connection.close_code == 1001
    assert proc.stderr is not None
    rest = (await proc.stderr.read()).decode()
    assert "s3cr3t-pw" not in "".join(lines) + rest


async def test_sigkill_leaves_the_last_will(broker: EmbeddedBroker, probe: MqttProbe, tmp_path: Path) -> None:
    proc, _ = await start_service(base_config(broker, tmp_path), tmp_path)
    await probe.wait_for("ocpp/bridge/state", lambda p: p == b"online")
    mark = probe.mark()
    proc.kill()
    await proc.wait()
    await probe.wait_for("ocpp/bridge/state", lambda p: p == b"offline", since=mark)


async def test_config_error_exits_2_before_opening_ports(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "bad.yaml"
    path.write_text(f"ocpp:\n  port: {port}\nmqtt:\n  port: 99999\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", "--config", str(path),
                                                stderr=asyncio.subprocess.PIPE, cwd=tmp_path)
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 2
    assert "mqtt.port = 99999: value must be at most 65535" in err.decode()
    assert len(err.decode().strip().splitlines()) == 1


async def test_broken_yaml_exits_2_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("ocpp: {port: 9000\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", "--config", str(path),
                                                stderr=asyncio.subprocess.PIPE, cwd=tmp_path)
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 2 and "invalid YAML" in err.decode() and "line 2" in err.decode()


async def test_sigterm_while_the_broker_never_answers_the_tls_handshake(tmp_path: Path) -> None:
    """A broker address that takes the TCP connection and then says nothing (a wrong port, a hung proxy):
    the MQTT connect, in its worker thread, waits in the TLS handshake for at most the 5 s connect timeout,
    again after every backoff. SIGTERM in the middle still ends the service, with exit code 0."""
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    config = {
        "data_dir": str(tmp_path / "data"),
        "ocpp": {"host": "127.0.0.1", "port": free_port()},
        "mqtt": {"host": "127.0.0.1", "port": port, "embedded_broker": False, "ssl": True, "tls_insecure": True},
    }
    try:
        proc, lines = await start_service(config, tmp_path)  # ready after the first-connect wait, MQTT still handshaking
        assert held, "the service never dialled the silent broker"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        for writer in held:
            writer.close()
        silent.close()
