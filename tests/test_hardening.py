"""Hardening from an outside attack run (issue 11): each test failed before its fix.

Real parts throughout: a real mosquitto, the real service (in-process or as the
``python -m ocpp_addon`` process users run), real WebSocket clients. The flood and
kill-loop tests are bounded in count and time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import websockets
import yaml
from ocpp.v16 import call

from ocpp_addon import auth, config as config_module
from ocpp_addon.app import App
from ocpp_addon.broker import EmbeddedBroker
from ocpp_addon.hub import CONNECTED, DISCONNECTED, READY, RESULT
from ocpp_addon.logs import LogBudget, OneLineFormatter
from ocpp_addon.mqtt_bridge import MqttBridge
from ocpp_addon.simulator import SimOptions, connect
from ocpp_addon.state import parse_number
from ocpp_addon.store import Store, StateFileError, parse_state
from ocpp_addon.topics import is_charger_id, printable, publish_topic_problem

from .conftest import TIMEOUT, MqttProbe, Service, free_port, make_config

LIMIT_SET = "ocpp/wallbox-1/charging_limit/set"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def handshake(url: str, headers: dict[str, str] | None = None, source: str = "127.0.0.1") -> int:
    """101 when the WebSocket opened (then closed again), else the HTTP status of the refusal."""
    try:
        ws = await websockets.connect(url, subprotocols=["ocpp1.6"], additional_headers=headers,
                                      local_addr=(source, 0), open_timeout=30)
    except websockets.InvalidStatus as err:
        return err.response.status_code
    await ws.close()
    return 101


# -- 1. a charger id is checked as a whole string, and every topic at one place ----------------------------------------


@pytest.mark.parametrize("candidate", ["LF1\n", "LF1\r", "a\n", "ok\x00", "bad/id", "bad+id", "bad#id", "", "x" * 65, "٣"])
def test_charger_ids_are_matched_as_a_whole(candidate: str) -> None:
    assert not is_charger_id(candidate)


def test_topics_with_control_characters_or_wildcards_never_reach_the_broker() -> None:
    assert publish_topic_problem("ocpp/LF1\n/state") is not None
    assert publish_topic_problem("ocpp/a+b/state") is not None
    assert publish_topic_problem("ocpp/+/state", wildcards=True) is None
    assert publish_topic_problem("ocpp/wallbox-1/state") is None


async def test_an_id_ending_in_a_newline_is_refused_at_the_handshake(service: Service, probe: MqttProbe) -> None:
    for path in ("LF1%0A", "LF1%0D", "LF1%0D%0A", "%0ALF1"):
        assert await handshake(f"{service.url}/{path}") == 404
    assert not service.app.hub.states and not service.app.store.chargers
    # the service's MQTT connection never dropped: a setpoint for a real charger still goes through
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "11")
    await sim.wait_for_call("SetChargingProfile")
    assert not any("\n" in topic for topic, _, _ in probe.messages)


async def test_a_stored_id_that_fails_todays_check_is_dropped_at_load(broker: EmbeddedBroker, tmp_path: Path,
                                                                     probe: MqttProbe, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(broker.port, tmp_path)
    data = Path(config["data_dir"])
    data.mkdir(parents=True)
    (data / "state.json").write_text(json.dumps({"version": 1, "next_transaction_id": 5, "chargers": {
        "LF1\n": {"requested_limit": 10, "requested_unit": "A"}, "good-1": {"requested_limit": 12, "requested_unit": "A"}}}))
    svc = Service(config)
    await svc.start()
    try:
        assert set(svc.app.hub.states) == {"good-1"}
        assert "dropped charger 'LF1\\n'" in caplog.text or "dropped charger LF1\\n" in caplog.text
        await probe.wait_for("ocpp/good-1/state")
        mark = probe.mark()
        probe.publish("ocpp/good-1/charging_limit/set", "9")  # the MQTT connection is alive and serving
        await probe.wait_json("ocpp/good-1/event", lambda d: d["status"] == "Queued", since=mark)
    finally:
        await svc.stop()
    assert not any("\n" in topic for topic, _, _ in probe.messages)


async def test_the_bridge_refuses_a_bad_topic_and_keeps_its_connection(broker: EmbeddedBroker, tmp_path: Path,
                                                                      probe: MqttProbe, caplog: pytest.LogCaptureFixture) -> None:
    bridge = MqttBridge(make_config(broker.port, tmp_path))
    await bridge.start()
    try:
        await asyncio.wait_for(bridge.connected.wait(), TIMEOUT)
        bridge.publish("ocpp/LF1\n/state", "{}", retain=True, qos=1)
        bridge.publish("ocpp/after/state", "ok", qos=1)
        await probe.wait_for("ocpp/after/state")
        assert bridge.refused_topics == 1 and bridge.client.is_connected()
        assert "refused to use MQTT topic ocpp/LF1\\n/state" in caplog.text
    finally:
        await bridge.stop()


# -- 2. PBKDF2: equal work, bounded work, fairness ---------------------------------------------------------------------


async def test_a_wrong_password_flood_does_not_starve_the_right_one(service_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """300 concurrent wrong-password handshakes for a PBKDF2 charger right after start, from another address:
    the charger's own login still gets in (it used to be cut at the 10 s handshake timeout)."""
    stored = auth.hash_password("right-Secr3t")  # the default strength users get from `python -m ocpp_addon.auth`
    service = await service_factory(ocpp={"auth": {"mode": "basic", "passwords": {"cp-1": stored}}})
    url = f"{service.url}/cp-1"
    attackers = [asyncio.create_task(handshake(url, basic("cp-1", f"guess-{n}"), source="127.0.0.2")) for n in range(300)]
    await asyncio.sleep(0)  # fault injection order: let the flood reach the server first
    assert await handshake(url, basic("cp-1", "right-Secr3t")) == 101
    statuses = await asyncio.gather(*attackers)
    assert set(statuses) == {401}
    hasher = service.app.central_system.auth.hasher
    assert not hasher._queues and hasher._running == 0  # nothing left waiting
    assert "too many login attempts waiting" in caplog.text  # bounded: most were refused without a hash


async def test_refusals_cost_the_same_work_whether_or_not_the_id_exists(service_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No timing oracle: a wrong PBKDF2 password, an unknown id and a wrong plain password each cost exactly one
    PBKDF2 of the configured strength (counted, not timed)."""
    stored = auth.hash_password("right", iterations=3000)
    service = await service_factory(ocpp={"auth": {"mode": "basic", "passwords": {"cp-1": stored, "cp-plain": "plain-pw"}}})
    hashes: list[int] = []
    original = auth.verify

    def counting(password: bytes, stored_form: str) -> bool:
        if auth.is_slow(stored_form):
            hashes.append(auth._parse_pbkdf2(stored_form)[0])
        return original(password, stored_form)

    monkeypatch.setattr(auth, "verify", counting)
    for charger_id in ("cp-1", "nobody", "cp-plain"):
        hashes.clear()
        assert await handshake(f"{service.url}/{charger_id}", basic(charger_id, "wrong")) == 401
        assert hashes == [3000], charger_id
    hashes.clear()
    assert await handshake(f"{service.url}/cp-plain", basic("cp-plain", "plain-pw")) == 101
    assert hashes == []  # a correct plain password needs no hash


# -- 3. durable before acknowledged: a kill loop -------------------------------------------------------------------------


async def _start_process(config_path: Path, cwd: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k not in ("CONNECTOR_NAME", "SUPERVISOR_TOKEN")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", "--config", str(config_path),
                                                stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd)
    assert proc.stderr is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)).decode()
        if not line:
            raise AssertionError("service exited before 'ready':\n" + "".join(lines))
        lines.append(line)
        if "ready:" in line:
            asyncio.ensure_future(proc.stderr.read())  # keep draining: a full pipe would block the service
            return proc


def _stored_limit(data_dir: Path, charger_id: str) -> float | None:
    try:
        state = json.loads((data_dir / "state.json").read_text())
    except FileNotFoundError:
        return None
    return state["chargers"].get(charger_id, {}).get("requested_limit")


async def test_no_acknowledged_setpoint_is_lost_to_kill_9(broker: EmbeddedBroker, probe: MqttProbe, tmp_path: Path) -> None:
    """Started as the README says (a config file, the default persistent MQTT session), killed with SIGKILL
    at random moments 0-200 ms after the broker took a setpoint: each one is on disk, or the broker
    delivers it again after the restart. 50 kills, none lost."""
    data_dir = tmp_path / "data"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "data_dir": str(data_dir),
        "ocpp": {"host": "127.0.0.1", "port": free_port()},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
    }))
    port = yaml.safe_load(config_path.read_text())["ocpp"]["port"]
    proc = await _start_process(config_path, tmp_path)
    for charger_id in ("wallbox-1", "sentinel"):  # both known, then offline: setpoints are kept for them
        sim, task = await connect(f"ws://127.0.0.1:{port}", charger_id, SimOptions(meter_interval=0))
        await asyncio.wait_for(sim.booted.wait(), TIMEOUT)
        await sim._connection.close()
        await task
        await probe.wait_for(f"ocpp/{charger_id}/availability", lambda p: p == b"offline")
    rng = random.Random(11)
    kills, redelivered, lost = 0, 0, []
    for round_ in range(50):
        value = 6 + round_ % 25 + (0.5 if round_ % 2 else 0.0)  # distinct from the one before
        probe.publish(LIMIT_SET, str(value))  # returns once the broker has it (QoS 1 PUBACK to us)
        # fault injection: the moment of the kill (not a wait for anything); half in the first few ms,
        # where the write to disk is still under way
        await asyncio.sleep(rng.uniform(0, 0.004) if round_ % 2 else rng.uniform(0, 0.2))
        mark = probe.mark()
        proc.kill()
        await proc.wait()
        kills += 1
        on_disk = _stored_limit(data_dir, "wallbox-1") == value
        # as after any real crash: the broker notices, publishes our last will, keeps the session
        await probe.wait_for("ocpp/bridge/state", lambda p: p == b"offline", since=mark)
        proc = await _start_process(config_path, tmp_path)
        # the barrier: a setpoint for another charger, delivered after anything the broker held for us
        # (a sentinel setpoint the killed service had not made durable comes back too: wait for this one)
        sentinel = 6 + round_ % 10
        probe.publish("ocpp/sentinel/charging_limit/set", str(sentinel))
        await probe.wait_json("ocpp/sentinel/event", lambda d: d["status"] == "Queued" and d["limit"] == sentinel, since=mark)
        if not on_disk:
            if any(json.loads(p).get("limit") == value for t, p, _ in probe.messages[mark:] if t == "ocpp/wallbox-1/event"):
                redelivered += 1
            else:
                lost.append(value)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    assert kills == 50
    assert lost == [], f"{len(lost)} of {kills} acknowledged setpoints lost ({redelivered} came back by redelivery)"
    assert _stored_limit(data_dir, "wallbox-1") == value


async def test_an_urgent_save_does_not_wait_for_a_pending_coalesced_one(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.next_transaction_id()  # schedules a coalesced save, 1 s away
    assert store._save_handle is not None
    written = store.update_charger("cp", urgent=True, requested_limit=16.0, requested_unit="A")
    assert written is not None and await asyncio.wait_for(written, TIMEOUT) is True
    assert store._save_handle is None  # the urgent write took the pending one along
    assert json.loads((tmp_path / "state.json").read_text())["chargers"]["cp"]["requested_limit"] == 16.0
    await store.close()


# -- 4. the state file is untrusted input ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    bytes(range(256)) * 4,  # random bytes: not UTF-8
    b"[" * 100_000 + b"]" * 100_000,  # deep nesting
    b'{"chargers": []}',
    b"null",
    b'{"chargers": {}, "next_transaction_id": NaN}',
])
def test_a_garbage_state_file_is_refused_as_a_whole(raw: bytes) -> None:
    with pytest.raises(StateFileError):
        parse_state(raw)


def test_bad_charger_entries_are_dropped_one_by_one() -> None:
    raw = json.dumps({"chargers": {
        "ok": {"requested_limit": 10, "requested_unit": "A", "vendor": "V"},
        "string-limit": {"requested_limit": "ten"},
        "negative": {"charging_limit": -3},
        "bad-unit": {"requested_unit": "kW"},
        "bad-strategy": {"strategy": {"purpose": "Nope"}},
        "four-phases": {"supply": {"dc": False, "phases": 4, "voltage": 230}},
        "string-dc": {"supply": {"dc": "yes", "phases": 1, "voltage": 230}},
        "LF1\n": {},
        "not-an-object": 7,
        "supply-ok": {"supply": {"dc": True, "phases": 1, "voltage": 400}},
    }, "next_transaction_id": 42}).encode()
    state, warnings = parse_state(raw)
    assert set(state["chargers"]) == {"ok", "supply-ok"} and state["next_transaction_id"] == 42
    assert state["chargers"]["supply-ok"]["supply"] == {"dc": True, "phases": 1, "voltage": 400.0}
    assert len(warnings) == 8 and all("dropped charger" in w for w in warnings)
    with pytest.raises(StateFileError):  # NaN in a limit: Python's json would read it, JSON does not have it
        parse_state(b'{"chargers": {"cp": {"requested_limit": NaN}}}')


@pytest.mark.parametrize("raw", [os.urandom(4096), b"[" * 100_000, b'{"chargers": {"cp": {"requested_limit": NaN}}}'])
async def test_the_service_starts_on_a_garbage_state_file_and_moves_it_aside(broker: EmbeddedBroker, tmp_path: Path, raw: bytes,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(broker.port, tmp_path)
    data = Path(config["data_dir"])
    data.mkdir(parents=True)
    (data / "state.json").write_bytes(raw)
    svc = Service(config)
    await svc.start()
    try:
        assert svc.app.hub.states == {}
        assert [p.name for p in data.glob("state.corrupt-*.json")]
        assert "is corrupt" in caplog.text
        sim = await svc.charger("cp")  # and it serves
        assert sim.calls("SetChargingProfile") == []  # a NaN limit never went out as 0 (a pause)
    finally:
        await svc.stop()


async def test_a_string_limit_in_the_state_file_does_not_break_saving(broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = make_config(broker.port, tmp_path)
    data = Path(config["data_dir"])
    data.mkdir(parents=True)
    (data / "state.json").write_text(json.dumps({"chargers": {"cp": {"requested_limit": "16"}, "cp-2": {"vendor": "x"}}}))
    app = App(config)
    assert set(app.store.chargers) == {"cp-2"}
    app.store.update_charger("cp-2", vendor="y")
    await app.store.close()
    assert json.loads((data / "state.json").read_text())["chargers"]["cp-2"]["vendor"] == "y"


# -- 5. odd handshakes get an answer, not a traceback --------------------------------------------------------------------


async def _raw_http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    writer.close()
    return head


@pytest.mark.parametrize("auth_mode", ["none", "basic"])
async def test_two_authorization_headers_get_an_answer_not_a_500(service_factory: Any, auth_mode: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    ocpp = {"auth": {"mode": "basic", "password": "pw-Secr3t"}} if auth_mode == "basic" else {}
    service = await service_factory(ocpp=ocpp)
    token = base64.b64encode(b"cp:pw-Secr3t").decode()
    request = (f"GET /cp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp1.6\r\n"
               f"Authorization: Basic {token}\r\nAuthorization: Basic {token}\r\n\r\n").encode()
    for _ in range(5):
        head = await _raw_http(service.config["ocpp"]["port"], request)
        assert head.startswith(b"HTTP/1.1 401" if auth_mode == "basic" else b"HTTP/1.1 101"), head
    assert "Traceback" not in caplog.text and "500" not in head.decode()
    assert caplog.text.count("more than one Authorization header") <= 1  # refusals are rate-limited per address


# -- 6. a flooding charger is slowed, then disconnected; the others do not notice --------------------------------------------


async def test_a_flooding_charger_is_slowed_and_disconnected_others_unaffected(service_factory: Any, probe: MqttProbe,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    service = await service_factory(ocpp={"max_message_rate": 50, "message_burst": 50, "flood_disconnect_after": 2})
    other = await service.charger("wallbox-1")
    ws = await websockets.connect(f"{service.url}/flooder", subprotocols=["ocpp1.6"])

    async def flood() -> None:
        try:
            for n in range(10_000):  # bounded
                await ws.send(json.dumps([2, f"hb-{n}", "Heartbeat", {}]))
        except websockets.ConnectionClosed:
            pass

    async def answers() -> list[str]:
        ids: list[str] = []
        try:
            while True:
                msg = json.loads(await ws.recv())
                if msg[0] == 3:
                    ids.append(msg[1])
        except websockets.ConnectionClosed:
            return ids

    reader = asyncio.create_task(answers())
    sender = asyncio.create_task(flood())
    for n in range(3):  # meanwhile another charger's round trips and setpoints go through
        await asyncio.wait_for(other.call(call.Heartbeat()), TIMEOUT)
        probe.publish(LIMIT_SET, str(8 + n))
        await other.wait_for_call("SetChargingProfile", lambda p: p["csChargingProfiles"]["chargingSchedule"]
                                  ["chargingSchedulePeriod"][0]["limit"] == 8 + n, timeout=TIMEOUT)
    ids = await asyncio.wait_for(reader, TIMEOUT * 2)
    await sender
    assert ws.close_code == 1008  # policy violation: the rate limit
    assert ids == [f"hb-{n}" for n in range(len(ids))] and 50 <= len(ids) < 10_000  # answered in order, until cut off
    assert "sends more than 50 frames/s" in caplog.text and "flooding for" in caplog.text
    assert "wallbox-1" in service.app.hub.connected


async def test_a_fast_charger_that_waits_for_answers_is_slowed_never_disconnected(service_factory: Any) -> None:
    """OCPP allows one CALL in flight: a charger replaying its offline queue that fast only gets slower."""
    service = await service_factory(ocpp={"max_message_rate": 50, "message_burst": 20, "flood_disconnect_after": 1})
    sim = await service.charger("replayer")
    for _ in range(150):  # ~2.6 s at 50/s after the burst: well past flood_disconnect_after
        await asyncio.wait_for(sim.call(call.Heartbeat()), TIMEOUT)
    assert "replayer" in service.app.hub.connected and sim._connection.close_code is None


async def test_answering_our_commands_quickly_is_not_throttled(service_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The rate limit is for what a charger sends by itself: its answers to our CALLs (one per CALL) are not
    counted, or a run of setpoints (an automation, a schedule, the latency bench) would be slowed to the
    charger's rate: at 1 frame/s after a burst of 20, 30 answers used to be read slowly and logged as a flood."""
    service = await service_factory(ocpp={"max_message_rate": 1, "message_burst": 20})  # its boot costs 6
    await service.charger("quick")
    caplog.set_level(logging.WARNING, logger="ocpp_addon.charge_point")
    results = [await service.app.hub.command("quick", "get_configuration") for _ in range(30)]
    assert [r["status"] for r in results] == ["Accepted"] * 30
    assert not [r for r in caplog.records if "frames/s" in r.getMessage()]


async def test_a_flood_of_fake_answers_is_still_throttled(service_factory: Any) -> None:
    """Only one frame per CALL of ours goes free: answers nobody asked for spend the rate like any frame."""
    service = await service_factory(ocpp={"max_message_rate": 5, "message_burst": 5, "flood_disconnect_after": 1})
    ws = await websockets.connect(f"{service.url}/faker", subprotocols=["ocpp1.6"])

    async def flood() -> None:
        try:
            for n in range(10_000):  # bounded
                await ws.send(json.dumps([3, f"nobody-asked-{n}", {}]))
        except websockets.ConnectionClosed:
            pass

    sender = asyncio.create_task(flood())
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT * 3)
    assert ws.close_code == 1008
    sender.cancel()


# -- 7. a charger that stops reading is dropped, and every command ends with an event ------------------------------------


async def test_a_charger_that_stops_reading_goes_offline_and_commands_end(service_factory: Any, probe: MqttProbe) -> None:
    """It stops reading (pongs stop too): offline within ping_interval + ping_timeout + the close wait, and the
    setpoint sent meanwhile ends with an event (Queued: kept for the reconnect) instead of silence."""
    service = await service_factory(ocpp={"ping_interval": 1, "ping_timeout": 2})
    sim = await service.charger("wallbox-1")
    ws = await websockets.connect(f"{service.url}/wallbox-1", subprotocols=["ocpp1.6"], ping_interval=None)
    await sim._connection.wait_closed()  # the newest connection owns the charger
    since = len(service.events)
    await ws.send(json.dumps([2, "hb", "Heartbeat", {}]))  # running: it takes commands
    await service.wait_event(READY, "wallbox-1", since=since)
    ws.transport.pause_reading()  # from now on it reads nothing, not even our pings
    probe.publish(LIMIT_SET, "12")
    result = await service.wait_event(RESULT, "wallbox-1", lambda e: e.data.get("command") == "charging_limit", since=since,
                                      timeout=TIMEOUT * 2)
    assert result.data["status"] == "Queued" and result.data["limit"] == 12
    await service.wait_event(DISCONNECTED, "wallbox-1", since=since, timeout=TIMEOUT * 2)
    await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"offline")
    assert service.app.store.chargers["wallbox-1"]["requested_limit"] == 12  # sent when it is back
    ws.transport.abort()


async def test_writes_stuck_behind_a_full_socket_drop_the_connection(service_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Once our writes to a charger stop draining, websockets' own keepalive waits on the same drain and never
    fires: the connection used to stay open for good. Small socket buffers on both ends (real sockets) make
    the buffers fill after a few hundred answers."""
    service = await service_factory(ocpp={"ping_interval": 60, "ping_timeout": 2, "max_message_rate": 100_000, "message_burst": 100_000})
    ws = await websockets.connect(f"{service.url}/wallbox-1", subprotocols=["ocpp1.6"], ping_interval=None)
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    for connection in service.app.central_system._admitted:
        connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ws.transport.pause_reading()

    async def send_without_reading() -> None:
        try:
            for n in range(20_000):  # bounded
                await ws.send(json.dumps([2, f"{n:036d}", "Heartbeat", {}]))
        except websockets.ConnectionClosed:
            pass

    sender = asyncio.create_task(send_without_reading())
    await service.wait_event(DISCONNECTED, "wallbox-1", timeout=TIMEOUT * 2)
    assert "wallbox-1: dropped the connection: it has not read what we sent for 2 s" in caplog.text
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    ws.transport.abort()


# -- 8. logs: bounded per charger, one line per record -------------------------------------------------------------------


async def test_a_malformed_frame_flood_writes_a_bounded_number_of_lines(service_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    service = await service_factory(ocpp={"max_message_rate": 100_000, "message_burst": 100_000})
    ws = await websockets.connect(f"{service.url}/noisy", subprotocols=["ocpp1.6"])
    caplog.set_level(logging.WARNING, logger="ocpp_addon.charge_point")
    for n in range(2000):
        await ws.send(f"not json {n}")
    await ws.send(json.dumps([2, "after", "Heartbeat", {}]))
    while json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))[1] != "after":
        pass
    lines = [r for r in caplog.records if r.name == "ocpp_addon.charge_point" and "noisy" in r.getMessage()]
    assert 1 <= len(lines) <= 10
    await ws.close()


def test_a_newline_in_a_charger_string_cannot_forge_a_log_line() -> None:
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("ocpp_addon.charge_point", logging.WARNING, __file__, 1, "%s: answered %s with %s",
                               ("cp", "Heartbeat\nINFO all good\r", "NotImplemented"), None)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "Heartbeat\\nINFO all good\\r" in line
    assert printable("a\x1b[31mred") == "a\\x1b[31mred"


def test_log_budget_counts_what_it_held_back() -> None:
    budget = LogBudget(lines=3, interval=3600)
    taken = [budget.take() for _ in range(10)]
    assert [ok for ok, _ in taken] == [True] * 3 + [False] * 7


async def test_newline_in_an_action_name_reaches_the_real_log_as_one_line(broker: EmbeddedBroker, tmp_path: Path) -> None:
    config_path = tmp_path / "config.yaml"
    port = free_port()
    config_path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "ocpp": {"host": "127.0.0.1", "port": port},
                                           "mqtt": {"host": "127.0.0.1", "port": broker.port}}))
    env = {k: v for k, v in os.environ.items() if k not in ("CONNECTOR_NAME", "SUPERVISOR_TOKEN")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", "--config", str(config_path),
                                                stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
    assert proc.stderr is not None
    while "ready:" not in (await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)).decode():
        pass
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/forger", subprotocols=["ocpp1.6"])
    await ws.send(json.dumps([2, "x", "Heartbeat\n2026-01-01 00:00:00,000 INFO    ocpp_addon.app: all good", {}]))
    assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))[0] == 4
    await ws.close()
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    lines = err.decode().splitlines()
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines)
    assert any("Heartbeat\\n2026-01-01" in line for line in lines)


# -- 9. no non-finite number in anything we publish; connectors capped ----------------------------------------------------


async def test_connector_id_1e400_and_a_thousand_connectors(service_factory: Any, probe: MqttProbe) -> None:
    service = await service_factory(bemcom={"enabled": True}, ocpp={"max_message_rate": 100_000, "message_burst": 100_000})
    ws = await websockets.connect(f"{service.url}/wallbox-1", subprotocols=["ocpp1.6"])
    await ws.send('[2, "inf", "StatusNotification", {"connectorId": 1e400, "errorCode": "NoError", "status": "Available"}]')
    answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert answer[:3] == [4, "inf", "TypeConstraintViolation"]
    for connector in range(1, 1001):
        await ws.send(json.dumps([2, f"s{connector}", "StatusNotification",
                                  {"connectorId": connector, "errorCode": "NoError", "status": "Available"}]))
    codes = {}
    while len(codes) < 1000:
        msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if msg[0] in (3, 4):
            codes[msg[1]] = msg[2] if msg[0] == 4 else "ok"
    limit = service.config["ocpp"]["max_connectors"]
    assert [k for k, v in codes.items() if v == "ok"] == [f"s{c}" for c in range(1, limit + 1)]
    assert {v for k, v in codes.items() if v != "ok"} == {"PropertyConstraintViolation"}
    state = await probe.wait_json("ocpp/wallbox-1/state", lambda d: f"connector_{limit}_status" in d)
    assert f"connector_{limit + 1}_status" not in state
    for topic, payload, _ in probe.messages:  # every payload we published is JSON, nothing non-finite
        if payload and payload[:1] in (b"{", b"["):
            json.loads(payload, parse_constant=lambda c: pytest.fail(f"{c} in {topic}"))
    discovery = probe.received("homeassistant/device/wallbox-1/config")[-1]
    assert len(discovery) < 40_000
    await ws.close()


async def test_a_claimed_billion_connectors_is_held_to_max_connectors(service: Service, probe: MqttProbe,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """NumberOfConnectors from GetConfiguration: every connector is iterated per message and becomes entities."""
    sim = await service.charger("wallbox-1", configuration={"NumberOfConnectors": "1000000000", "ChargeProfileMaxStackLevel": "-5"})
    limit = service.config["ocpp"]["max_connectors"]
    await probe.wait_json("ocpp/wallbox-1/state", lambda d: d["capabilities"].get("number_of_connectors") == limit)
    caps = service.app.hub.states["wallbox-1"].capabilities
    assert "max_stack_level" not in caps  # a negative level is not a level
    assert "reports 1000000000 connectors; using the first 8" in caplog.text
    mark = probe.mark()
    await sim.send_meter_values()  # still served, at once: no billion-item connector list per message
    await probe.wait_json("ocpp/wallbox-1/state", lambda d: d.get("power") is not None, since=mark)
    discovery = probe.received("homeassistant/device/wallbox-1/config")[-1]
    assert f'"unlock_{limit}"'.encode() in discovery and f'"unlock_{limit + 1}"'.encode() not in discovery


async def test_a_2_0_1_transaction_on_an_evse_above_max_connectors_is_refused(service: Service) -> None:
    ws = await websockets.connect(f"{service.url}/station-9", subprotocols=["ocpp2.0.1"])
    try:
        await ws.send(json.dumps([2, "b", "BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}]))
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))[0] == 3
        event = {"eventType": "Started", "timestamp": "2026-01-01T00:00:00Z", "triggerReason": "Authorized", "seqNo": 0,
                 "transactionInfo": {"transactionId": "t1"}, "evse": {"id": 5000, "connectorId": 1}}
        await ws.send(json.dumps([2, "t", "TransactionEvent", event]))
        while True:  # our own CALLs (GetVariables) may come first
            answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if answer[1] == "t":
                break
        assert answer[:3] == [4, "t", "PropertyConstraintViolation"]
        assert 5000 not in service.app.hub.states["station-9"].connectors
    finally:
        await ws.close()


async def test_readings_that_sum_beyond_float_range_are_published_as_null(service_factory: Any, probe: MqttProbe) -> None:
    """Three phases of 1e308 W are each finite, their sum is not: the state still goes out as valid JSON with
    power null (the json writer raised there, so that state message and the rest of its flush never went out)."""
    service = await service_factory()
    ws = await websockets.connect(f"{service.url}/wallbox-1", subprotocols=["ocpp1.6"])
    sampled = [{"value": "1e308", "measurand": "Power.Active.Import", "phase": phase, "unit": "W"} for phase in ("L1", "L2", "L3")]
    sampled.append({"value": "12.5", "measurand": "Current.Import", "phase": "L1", "unit": "A"})
    await ws.send(json.dumps([2, "m1", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "2026-01-01T00:00:00Z",
                                                                                          "sampledValue": sampled}]}]))
    assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == [3, "m1", {}]
    state = await probe.wait_json("ocpp/wallbox-1/state", lambda d: d.get("current_l1") == 12.5)
    assert state["power"] is None and state["power_l1"] == 1e308
    for topic, payload, _ in probe.messages:
        if payload and payload[:1] in (b"{", b"["):
            json.loads(payload, parse_constant=lambda c: pytest.fail(f"{c} in {topic}"))
    await ws.close()


@pytest.mark.parametrize("unique_id", ['a"b\\c', "\u00e9\U0001f600", "</script>", "x" * 36])
async def test_an_empty_answer_is_the_frame_json_would_write(service_factory: Any, unique_id: str) -> None:
    """Empty results (MeterValues, StatusNotification) skip the dataclass serialisation; the id is still JSON-escaped."""
    service = await service_factory()
    ws = await websockets.connect(f"{service.url}/wallbox-1", subprotocols=["ocpp1.6"])
    await ws.send(json.dumps([2, unique_id, "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"}]))
    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == json.dumps([3, unique_id, {}], separators=(",", ":"))
    await ws.close()


# -- 10. an empty payload (how MQTT deletes a retained message) commands nothing ----------------------------------------


async def test_empty_retained_payloads_unlock_and_reset_nothing(service: Service, probe: MqttProbe, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ocpp_addon.homeassistant")
    sim = await service.charger("wallbox-1")
    for command in ("unlock", "reset", "refresh", "available", "charging", "remove", "charging_limit"):
        probe.publish(f"ocpp/wallbox-1/{command}/set", "", retain=True)
    probe.publish("ocpp/wallbox-1/charging_limit/clear", "", retain=True)
    probe.publish("ocpp/wallbox-1/unlock/set", "1")  # the barrier: an explicit command behind them
    await sim.wait_for_call("UnlockConnector")
    assert len(sim.calls("UnlockConnector")) == 1
    assert not sim.calls("Reset") and not sim.calls("TriggerMessage") and not sim.calls("ChangeAvailability")
    assert not sim.calls("RemoteStopTransaction") and not sim.calls("ClearChargingProfile") and not sim.calls("SetChargingProfile")
    assert "wallbox-1" in service.app.hub.states
    assert "ignored an empty unlock payload" in caplog.text


# -- 11. only plain numbers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1_9", "١٩", "１９", "0x10", "1e", "nan", "inf", "-inf", "Infinity", "", " ", "+-1", "1.2.3", "٣.5"])
def test_only_plain_ascii_numbers_are_numbers(text: str) -> None:
    assert parse_number(text) is None


@pytest.mark.parametrize(("text", "value"), [("19", 19.0), (" 16.5 ", 16.5), ("-2", -2.0), ("1e3", 1000.0), (".5", 0.5), ("+7", 7.0)])
def test_plain_numbers_parse(text: str, value: float) -> None:
    assert parse_number(text) == value


def test_numbers_beyond_double_range_are_not_numbers() -> None:
    assert parse_number(10**400) is None and parse_number(float("inf")) is None and parse_number(True) is None


# -- 12. a data directory that cannot be written: no leaked temp files, a problem on MQTT --------------------------------


async def test_an_unwritable_state_file_is_reported_and_leaks_nothing(service_factory: Any, probe: MqttProbe) -> None:
    service = await service_factory()
    data = Path(service.config["data_dir"])
    data.mkdir(parents=True, exist_ok=True)
    blocker = data / "state.json"
    if blocker.exists():
        blocker.unlink()
    blocker.mkdir()  # os.replace onto a directory fails: the same path as a full or read-only disk
    (blocker / "keep").write_text("x")
    await service.charger("wallbox-1")
    mark = probe.mark()
    for value in (7, 8, 9):
        probe.publish(LIMIT_SET, str(value))
    info = await probe.wait_json("ocpp/bridge/info", lambda d: d.get("problem"), since=mark)
    assert "cannot write" in info["problem"]
    await service.wait_event(RESULT, "wallbox-1", lambda e: e.data.get("limit") == 9 and e.data["status"] == "Accepted")
    assert await service.app.store.save_now() is False  # and nothing is in flight after it (one writer, in order)
    assert [p.name for p in data.iterdir() if p.name.startswith(".state.")] == []
    shutil.rmtree(blocker)
    mark = probe.mark()
    probe.publish(LIMIT_SET, "10")
    info = await probe.wait_json("ocpp/bridge/info", lambda d: d.get("problem") is None, since=mark)
    assert json.loads((data / "state.json").read_text())["chargers"]["wallbox-1"]["requested_limit"] == 10


# -- 13. a password must be text ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [[], {}, ["a"], True, {"a": 1}])
def test_a_password_that_is_not_text_is_a_config_error(value: Any) -> None:
    with pytest.raises(config_module.ConfigError, match=r"ocpp.auth.password: expected text"):
        config_module.validate({"ocpp": {"auth": {"mode": "basic", "password": value}}})
    with pytest.raises(config_module.ConfigError, match=r"mqtt.password: expected text"):
        config_module.validate({"mqtt": {"password": value}})


async def test_check_refuses_an_empty_list_password(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("ocpp:\n  auth:\n    mode: basic\n    password: []\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", "--config", str(path), "--check",
                                                stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=tmp_path)
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 2 and "ocpp.auth.password: expected text, got a list" in err.decode()


# -- commands queued for a charger that does not answer (review r8) ------------------------------------------------------


MAX_PENDING_COMMANDS = 16  # the README's limit (hub.MAX_PENDING_COMMANDS)


async def wait_results(service: Service, charger_id: str, status: str, count: int, since: int) -> list[Any]:
    """Wait until ``count`` command results with ``status`` have been emitted for the charger."""
    def matching() -> list[Any]:
        return [e for e in service.events[since:] if e.kind == RESULT and e.charger_id == charger_id and e.data.get("status") == status]

    async with service._event_arrived:
        await asyncio.wait_for(service._event_arrived.wait_for(lambda: len(matching()) >= count), TIMEOUT)
    return matching()


async def test_commands_beyond_the_cap_are_answered_busy_and_a_limit_still_gets_through(
        service: Service, probe: MqttProbe, caplog: pytest.LogCaptureFixture) -> None:
    """Every MQTT command was a task waiting for the charger's call lock: 5,000 to a silent charger were 5,001
    tasks, ~83 h of queue at the default response_timeout, with a new charging limit behind them."""
    sim = await service.charger("wallbox-1", extra_ignored_actions={"UnlockConnector"})
    since, extra = len(service.events), 4
    for _ in range(MAX_PENDING_COMMANDS + extra):
        probe.publish("ocpp/wallbox-1/unlock/set", "1")
    busy = await wait_results(service, "wallbox-1", "Busy", extra, since)
    assert {e.data["command"] for e in busy} == {"unlock_connector"}
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d["status"] == "Busy" and d["command"] == "unlock_connector")
    assert len([r for r in caplog.records if "refused (Busy)" in r.getMessage()]) == 1  # one line, not one per command
    probe.publish(LIMIT_SET, "10")
    sim.options.extra_ignored_actions.clear()  # it answers again: the queue drains, the limit follows it
    result = await service.wait_event(RESULT, "wallbox-1", lambda e: e.data.get("command") == "charging_limit", since=since,
                                      timeout=TIMEOUT * 2)
    assert result.data["status"] == "Accepted" and result.data["limit"] == 10
    assert len(sim.calls("UnlockConnector")) == MAX_PENDING_COMMANDS  # the refused ones never reached the charger


async def test_a_refresh_already_waiting_is_not_queued_twice(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", extra_ignored_actions={"TriggerMessage"})
    since = len(service.events)
    for _ in range(3):
        probe.publish("ocpp/wallbox-1/refresh/set", "refresh")
    queued = await wait_results(service, "wallbox-1", "Queued", 2, since)
    assert {e.data["command"] for e in queued} == {"refresh"}
    sim.options.extra_ignored_actions.clear()
    done = await service.wait_event(RESULT, "wallbox-1", lambda e: e.data.get("command") == "refresh" and e.data["status"] != "Queued",
                                    since=since, timeout=TIMEOUT * 2)
    assert done.data["status_notification"] == "Accepted"
    assert [p["requestedMessage"] for p in sim.calls("TriggerMessage")] == ["MeterValues", "StatusNotification"]
    probe.publish("ocpp/wallbox-1/refresh/set", "refresh")  # nothing waiting any more: a new refresh is a new request
    await sim.wait_for_call("TriggerMessage", lambda p: len(sim.calls("TriggerMessage")) == 3)


# -- a WebSocket handshake alone is not a charger (review r10) ------------------------------------------------------------


async def retained_topics(port: int) -> list[tuple[str, bytes]]:
    """Every retained message the broker holds, as a client subscribing now sees them."""
    late = MqttProbe(port, asyncio.get_running_loop())
    try:
        await late.subscribe("#")
        late.publish("test/barrier", "end")  # queued after the retained messages the subscription was sent
        await late.wait_for("test/barrier")
        return [(t, p) for t, p, retained in late.messages if retained]
    finally:
        late.close()


async def test_connections_that_never_say_anything_leave_no_charger_behind(service: Service, probe: MqttProbe) -> None:
    """With the defaults each new id in the URL got a ChargerState and a retained Home Assistant device,
    never removed: 1,000 connect-close cycles left 1,000 chargers and 9.4 MB of retained discovery."""
    sim = await service.charger("wallbox-1")  # booted: it stays after its disconnect
    ghosts = [f"ghost-{i}" for i in range(50)]
    since = len(service.events)

    async def connect_and_close(charger_id: str) -> None:
        async with websockets.connect(f"{service.url}/{charger_id}", subprotocols=["ocpp1.6"]):
            await service.wait_event(CONNECTED, charger_id, since=since)

    for batch in range(0, len(ghosts), 10):
        await asyncio.gather(*(connect_and_close(cid) for cid in ghosts[batch:batch + 10]))
    # slow to boot: shown while connected
    async with websockets.connect(f"{service.url}/slow-1", subprotocols=["ocpp1.6"]):
        await probe.wait_json("homeassistant/device/slow-1/config")
        assert "slow-1" in service.app.hub.states
    # running since before a reconnect, so it never boots again: one Heartbeat says it is a charger
    async with websockets.connect(f"{service.url}/running-1", subprotocols=["ocpp1.6"]) as running:
        await running.send(json.dumps([2, "1", "Heartbeat", {}]))
        assert json.loads(await running.recv())[0] == 3
    await sim._connection.close()
    for cid in [*ghosts, "slow-1", "running-1", "wallbox-1"]:
        await service.wait_event(DISCONNECTED, cid, since=since)
    for cid in [*ghosts, "slow-1"]:  # the discovery clears that Home Assistant removes a device on
        await probe.wait_for(f"homeassistant/device/{cid}/config", lambda p: p == b"")

    hub = service.app.hub
    assert sorted(hub.states) == ["running-1", "wallbox-1"] and sorted(hub.store.chargers) == ["running-1", "wallbox-1"]
    retained = await retained_topics(probe.client._port)
    assert not [t for t, _ in retained if "ghost-" in t or "slow-1" in t]
    assert {"homeassistant/device/wallbox-1/config", "homeassistant/device/running-1/config"} <= {t for t, _ in retained}
    info = await probe.wait_json("ocpp/bridge/info", lambda d: d["chargers"] == ["running-1", "wallbox-1"])
    assert info["connected_chargers"] == 0
