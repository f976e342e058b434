"""The chargers page's server (ocpp_addon/web.py) without a browser: who may connect, what the
ingress prefix does, the frame capture and its cost, the commands' validation.

Real parts throughout: the service with mosquitto, simulated chargers, aiohttp clients on
loopback (127.0.0.2 plays a stranger, 127.0.0.1 the ingress proxy).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
import yaml

from ocpp_addon import auth, config as config_module, supervisor
from ocpp_addon.auth import hash_password
from ocpp_addon import web as web_module
from ocpp_addon.web import frame_summary, ingress_prefix

from .conftest import TIMEOUT, MqttProbe, Service
from .ingress_proxy import INGRESS_PATH


def web_section(**overrides: Any) -> dict[str, Any]:
    section = {"enabled": True, "ingress": True, "ingress_proxy": "127.0.0.1", "host": "127.0.0.1", "port": 0}
    section.update(overrides)
    return section


def base_url(svc: Service) -> str:
    return f"http://127.0.0.1:{svc.app.web.port}"


@pytest.fixture
async def stranger() -> AsyncIterator[aiohttp.ClientSession]:
    """A client on another loopback address: not the ingress proxy."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as session:
        yield session


@pytest.fixture
async def proxy_client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))) as session:
        yield session


class PageSocket:
    """The page's WebSocket, read as the browser would: messages in order, waited on with a timeout."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    def mark(self) -> int:
        """Index to pass as ``since`` to wait only for messages arriving after now."""
        return len(self.seen)

    async def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT, since: int = 0) -> dict[str, Any]:
        for message in self.seen[since:]:
            if predicate(message):
                return message

        async def read() -> dict[str, Any]:
            while True:
                message = json.loads(await self.ws.receive_str())
                self.seen.append(message)
                if predicate(message):
                    return message

        return await asyncio.wait_for(read(), timeout)


# -- pure parts ---------------------------------------------------------------------------------


def test_ingress_prefix_takes_the_supervisors_path_and_nothing_else() -> None:
    assert ingress_prefix("/api/hassio_ingress/AbC-12_x/") == "/api/hassio_ingress/AbC-12_x"
    assert ingress_prefix(None) == ""
    for odd in ('/x"><script>', "//evil.example/x", "relative", "/a/../b", "/a b", "/x\n"):
        assert ingress_prefix(odd) == "", odd


def test_frames_are_labelled_with_the_action_their_answer_belongs_to() -> None:
    pending: dict[str, str] = {}
    call = frame_summary("in", '[2,"7","Heartbeat",{}]', pending)
    answer = frame_summary("out", '[3,"7",{"currentTime":"2026-01-01T00:00:00Z"}]', pending)
    ours = frame_summary("out", '[2,"a1","Reset",{"type":"Soft"}]', pending)
    error = frame_summary("in", '[4,"a1","NotImplemented","",{}]', pending)
    junk = frame_summary("in", "not json", pending)
    assert (call["type"], call["action"], answer["type"], answer["action"]) == ("CALL", "Heartbeat", "CALLRESULT", "Heartbeat")
    assert (ours["action"], error["type"], error["action"]) == ("Reset", "CALLERROR", "Reset")
    assert (junk["type"], junk["action"], junk["text"]) == ("?", "", "not json")
    assert pending == {}
    huge = frame_summary("in", "x" * 100_000, pending)
    assert len(huge["text"]) < 17_000 and huge["text"].endswith("(100000 characters)")


def test_standalone_needs_a_password_and_the_add_on_serves_ingress(tmp_path: Path) -> None:
    with pytest.raises(config_module.ConfigError, match="web.password"):
        config_module.validate({"web": {"enabled": True}})
    assert config_module.validate({})["web"]["enabled"] is False  # off unless asked for
    with pytest.raises(config_module.ConfigError, match="web.ingress_proxy"):
        config_module.validate({"web": {"ingress_proxy": "proxy.example"}})
    options = tmp_path / "options.json"
    options.write_text("{}", encoding="utf-8")
    _, config = supervisor.load({"OCPP_ADDON_OPTIONS": str(options)})
    web = config["web"]
    assert (web["enabled"], web["ingress"], web["host"], web["port"], web["ingress_proxy"]) == (True, True, "0.0.0.0", 8099, "172.30.32.2")


def test_the_add_on_manifest_puts_the_page_in_the_sidebar() -> None:
    manifest = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text(encoding="utf-8"))
    assert manifest["ingress"] is True
    # The Supervisor proxies to ingress_port (8099 unless set): the port the app listens on as an add-on.
    assert manifest.get("ingress_port", 8099) == supervisor.INGRESS_PORT == supervisor.WEB["port"]
    assert manifest["panel_icon"].startswith("mdi:") and manifest["panel_title"]
    assert "8099/tcp" not in manifest.get("ports", {})  # reachable through ingress only, never on the host


# -- served -------------------------------------------------------------------------------------


async def test_only_the_ingress_proxy_is_let_in_and_every_url_follows_x_ingress_path(
        service_factory: Callable[..., Any], stranger: aiohttp.ClientSession, proxy_client: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    svc = await service_factory(web=web_section())
    for path in ("/", "/ws", "/static/app.js") * 10:
        async with stranger.get(base_url(svc) + path) as response:
            assert response.status == 403, path
            assert response.headers["X-Content-Type-Options"] == "nosniff", path  # refusals carry the page's headers too
    # Each refusal is logged, but a stranger hammering the port gets 10 lines a minute, not one per request.
    refusals = [r for r in caplog.records if "refused a request from 127.0.0.2" in r.getMessage()]
    assert len(refusals) == 10
    async with proxy_client.get(base_url(svc) + "/", headers={"X-Ingress-Path": INGRESS_PATH}) as response:
        assert response.status == 200
        page = await response.text()
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self'")
    assert f'<base href="{INGRESS_PATH}/">' in page
    # No absolute URL anywhere on the page: each resolves under the ingress prefix.
    assert 'src="/' not in page and 'href="/' not in page.replace(f'<base href="{INGRESS_PATH}/">', "")
    async with proxy_client.get(base_url(svc) + "/", headers={"X-Ingress-Path": '/x"><script>alert(1)</script>'}) as response:
        assert '<base href="/">' in await response.text()
    async with proxy_client.get(base_url(svc) + "/static/app.js") as response:
        assert response.status == 200 and response.content_type == "text/javascript"
    async with proxy_client.get(base_url(svc) + "/static/..%2fweb.py") as response:
        assert response.status == 404 and response.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_standalone_asks_for_the_password_and_refuses_other_sites_websockets(
        service_factory: Callable[..., Any], proxy_client: aiohttp.ClientSession) -> None:
    svc = await service_factory(web={"enabled": True, "host": "127.0.0.1", "port": 0, "password": hash_password("s3cret", 1000)})
    url = base_url(svc)
    async with proxy_client.get(url + "/") as response:
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:guess").decode()}
    async with proxy_client.get(url + "/", headers=wrong) as response:
        assert response.status == 401
    right = {"Authorization": "Basic " + base64.b64encode(b"admin:s3cret").decode()}
    async with proxy_client.get(url + "/", headers=right) as response:
        assert response.status == 200
    async with proxy_client.get(url + "/ws", headers={**right, "Origin": "http://evil.example", "Upgrade": "websocket",
                                                      "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                      "Sec-WebSocket-Version": "13"}) as response:
        assert response.status == 403
    async with proxy_client.ws_connect(url.replace("http", "ws") + "/ws", headers={**right, "Origin": url}) as ws:
        hello = json.loads(await ws.receive_str(timeout=TIMEOUT))
        assert hello["type"] == "hello" and hello["chargers"] == []


async def test_the_standalone_password_is_hashed_off_the_event_loop_and_once_per_browser(
        service_factory: Callable[..., Any], proxy_client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """PBKDF2 is slow on purpose: on the loop that serves the chargers, every request of the page
    (and every wrong guess from anyone who can reach the port) would stall them all."""
    hashed_on_the_loop: list[bool] = []
    loop_thread = threading.get_ident()
    real_verify = auth.verify

    def spy(password: bytes, stored: str) -> bool:
        hashed_on_the_loop.append(threading.get_ident() == loop_thread)
        return real_verify(password, stored)

    monkeypatch.setattr(auth, "verify", spy)
    monkeypatch.setattr(web_module, "verify", spy, raising=False)  # wherever the page would call it from
    svc = await service_factory(web={"enabled": True, "host": "127.0.0.1", "port": 0, "password": hash_password("s3cret", 1000)})
    url = base_url(svc)
    right = {"Authorization": "Basic " + base64.b64encode(b"me:s3cret").decode()}
    for path in ("/", "/static/app.js", "/static/style.css"):
        async with proxy_client.get(url + path, headers=right) as response:
            assert response.status == 200, path
    async with proxy_client.ws_connect(url.replace("http", "ws") + "/ws", headers=right) as ws:
        assert json.loads(await ws.receive_str(timeout=TIMEOUT))["type"] == "hello"
    wrong = {"Authorization": "Basic " + base64.b64encode(b"me:guess").decode()}
    for _ in range(3):
        async with proxy_client.get(url + "/", headers=wrong) as response:
            assert response.status == 401
    # One hash for the right password, one for the wrong one (refused again without hashing), both on a worker thread.
    assert hashed_on_the_loop == [False, False]


async def test_frames_are_captured_only_while_a_page_is_open_and_kept_in_a_bounded_buffer(
        service_factory: Callable[..., Any], proxy_client: aiohttp.ClientSession) -> None:
    svc = await service_factory(web=web_section(frames_per_charger=10))
    sim = await svc.charger("wallbox-1")
    hub, page = svc.app.hub, svc.app.web
    assert hub.frame_tap is None and page.frames == {}  # nobody looks: nothing is captured
    async with proxy_client.ws_connect(base_url(svc).replace("http", "ws") + "/ws") as ws:
        sock = PageSocket(ws)
        hello = await sock.wait(lambda m: m["type"] == "hello")
        assert [c["id"] for c in hello["chargers"]] == ["wallbox-1"]
        assert hello["chargers"][0]["vendor"] == "Simulated"
        assert hub.frame_tap is not None
        await sock.send({"type": "watch", "id": "wallbox-1"})
        await sock.wait(lambda m: m["type"] == "frames" and m["id"] == "wallbox-1")
        for _ in range(8):  # 16 frames: 8 CALLs in, 8 answers out
            await sim.send_meter_values()
        answer = await sock.wait(lambda m: m["type"] == "frame" and m["frame"]["dir"] == "out" and m["frame"]["action"] == "MeterValues")
        assert answer["frame"]["type"] == "CALLRESULT"
        update = await sock.wait(lambda m: m["type"] == "charger" and m["charger"]["power"] is not None)
        assert update["charger"]["connected"] is True
        await sock.wait(lambda m: sum(x["type"] == "frame" for x in sock.seen) >= 16)
        assert len(page.frames["wallbox-1"]) == 10
    await asyncio.wait_for(page.nobody_looks.wait(), TIMEOUT)  # the page closed: the tap is gone again
    assert hub.frame_tap is None


async def test_commands_from_the_page_take_the_mqtt_paths_and_validation(
        service_factory: Callable[..., Any], proxy_client: aiohttp.ClientSession) -> None:
    svc = await service_factory(web=web_section())
    sim = await svc.charger("wallbox-1")
    async with proxy_client.ws_connect(base_url(svc).replace("http", "ws") + "/ws") as ws:
        sock = PageSocket(ws)
        await sock.wait(lambda m: m["type"] == "hello")
        await sock.send({"type": "command", "id": "wallbox-1", "command": "charging_limit", "payload": "99999"})
        refused = await sock.wait(lambda m: m["type"] == "result" and m["result"]["status"] == "Invalid")
        assert "charging_limit" == refused["result"]["command"]
        await sock.send({"type": "command", "id": "wallbox-1", "command": "reset", "payload": "<b>Now</b>"})
        bad_reset = await sock.wait(lambda m: m["type"] == "result" and m["result"]["command"] == "reset")
        assert bad_reset["result"]["status"] == "Invalid"
        await sock.send({"type": "command", "id": "wallbox-1", "command": "charging_limit", "payload": "12"})
        await sim.wait_for_call("SetChargingProfile", lambda p: p["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 12)
        applied = await sock.wait(lambda m: m["type"] == "charger" and m["charger"]["charging_limit"] == 12)
        assert "limit_reason" not in applied["charger"]
        await sock.send({"type": "command", "id": "wallbox-1", "command": "refresh", "payload": "refresh"})
        await sim.wait_for_call("TriggerMessage")
        await sock.send({"type": "command", "id": "nobody", "command": "reset", "payload": "Soft"})
        await sock.wait(lambda m: m["type"] == "error" and m["reason"] == "unknown charger")
        await sock.send({"type": "change_configuration", "id": "wallbox-1", "key": "NumberOfConnectors", "value": "4"})
        rejected = await sock.wait(lambda m: m["type"] == "result" and m["result"]["command"] == "change_configuration")
        assert rejected["result"]["status"] == "Rejected"
        last = await sock.wait(lambda m: m["type"] == "charger" and (m["charger"].get("last_error") or {}).get("command") == "change_configuration")
        assert last["charger"]["last_error"]["status"] == "Rejected"


async def test_a_taken_port_costs_the_page_not_the_chargers(service_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        svc = await service_factory(web=web_section(port=taken.getsockname()[1]))
        assert "chargers page: cannot listen on 127.0.0.1" in caplog.text
        sim = await svc.charger("wallbox-1")  # chargers are served all the same
        assert sim.booted.is_set()


async def test_the_page_and_mqtt_refuse_a_bad_payload_alike_and_the_page_offers_no_other_commands(
        service_factory: Callable[..., Any], proxy_client: aiohttp.ClientSession, probe: MqttProbe) -> None:
    svc = await service_factory(web=web_section())
    sim = await svc.charger("wallbox-1")
    async with proxy_client.ws_connect(base_url(svc).replace("http", "ws") + "/ws") as ws:
        sock = PageSocket(ws)
        await sock.wait(lambda m: m["type"] == "hello")
        sock_mark = sock.mark()
        for command, payload in (("unlock", "99"), ("available", "maybe"), ("charging_limit", "{\"limit\": 10, \"unit\": \"kW\"}")):
            mark = probe.mark()
            probe.publish(f"ocpp/wallbox-1/{command}/set", payload)
            by_mqtt = await probe.wait_json("ocpp/wallbox-1/event", lambda d: d["command"] == command, since=mark)
            # The MQTT command's result reaches the page too (as it does the event topic): wait for it first.
            await sock.wait(lambda m: m["type"] == "result" and m["result"]["command"] == command, since=sock_mark)
            sock_mark = sock.mark()
            await sock.send({"type": "command", "id": "wallbox-1", "command": command, "payload": payload})
            by_page = await sock.wait(lambda m: m["type"] == "result" and m["result"]["command"] == command, since=sock_mark)
            sock_mark = sock.mark()
            assert by_mqtt["status"] == by_page["result"]["status"] == "Invalid"
            assert by_mqtt["reason"] == by_page["result"]["reason"]
        # MQTT's remove and charging_schedule topics have no control on the page, and no way in through it.
        since = len(sim.received)
        for command, payload in (("remove", "remove"), ("charging_schedule", "[]")):
            await sock.send({"type": "command", "id": "wallbox-1", "command": command, "payload": payload})
            refused = await sock.wait(lambda m: m["type"] == "result" and m["result"]["command"] == command)
            assert refused["result"]["status"] == "UnknownCommand"
        assert "wallbox-1" in svc.app.hub.states and sim.received[since:] == []


async def test_configuration_values_go_to_the_asking_page_only(
        service_factory: Callable[..., Any], proxy_client: aiohttp.ClientSession, probe: MqttProbe) -> None:
    """Configuration keys can hold credentials: they are not published on MQTT's event topic nor sent to other pages."""
    svc = await service_factory(web=web_section())
    sim = await svc.charger("wallbox-1")
    sim.changed_configuration["BackendPassword"] = "hunter2-wifi"
    url = base_url(svc).replace("http", "ws") + "/ws"
    async with proxy_client.ws_connect(url) as ws_a, proxy_client.ws_connect(url) as ws_b:
        asker, other = PageSocket(ws_a), PageSocket(ws_b)
        await asker.wait(lambda m: m["type"] == "hello")
        await other.wait(lambda m: m["type"] == "hello")
        mark = probe.mark()
        await asker.send({"type": "get_configuration", "id": "wallbox-1"})
        answer = await asker.wait(lambda m: m["type"] == "configuration")
        assert answer["status"] == "Accepted"
        assert {"key": "BackendPassword", "readonly": False, "value": "hunter2-wifi"} in answer["keys"]
        # A later command's result is the barrier: it reaches MQTT and the other page after anything sent before it.
        await asker.send({"type": "command", "id": "wallbox-1", "command": "refresh", "payload": "refresh"})
        await probe.wait_json("ocpp/wallbox-1/event", lambda d: d["command"] == "refresh", since=mark)
        await other.wait(lambda m: m["type"] == "result" and m["result"]["command"] == "refresh")
        assert not any(b"hunter2" in payload for _, payload, _ in probe.messages[mark:])
        assert not any("hunter2" in json.dumps(m) for m in other.seen)


async def test_results_for_ids_that_never_connected_are_not_kept(
        service_factory: Callable[..., Any], probe: MqttProbe) -> None:
    svc = await service_factory(web=web_section())
    mark = probe.mark()
    for n in range(20):
        probe.publish(f"ocpp/ghost-{n}/charging_limit/set", "10")
    await probe.wait_json("ocpp/ghost-19/event", lambda d: d["status"] == "UnknownCharger", since=mark)
    assert svc.app.web._extra == {}


async def test_a_2_0_1_stations_device_model_is_listed_and_changed_through_set_variables(
        service_factory: Callable[..., Any], proxy_client: aiohttp.ClientSession, probe: MqttProbe) -> None:
    """The page's configuration list for a 2.0.1 station: its full report, ReadOnly marked; a change is a SetVariables."""
    svc = await service_factory(web=web_section())
    sim = await svc.charger("station-1", ocpp="2.0.1", connectors=2)
    async with proxy_client.ws_connect(base_url(svc).replace("http", "ws") + "/ws") as ws:
        sock = PageSocket(ws)
        await sock.wait(lambda m: m["type"] == "hello")
        await sock.send({"type": "get_configuration", "id": "station-1"})
        answer = await sock.wait(lambda m: m["type"] == "configuration")
        assert answer["status"] == "Accepted"
        report = sim.calls("GetBaseReport")[-1]
        assert report["reportBase"] == "FullInventory"
        listed = {k["key"]: k for k in answer["keys"]}
        assert len(listed) == len(sim.device_model)  # the simulator reports in chunks of 8: all of them arrived
        assert listed["SampledDataCtrlr.TxUpdatedInterval"] == {"key": "SampledDataCtrlr.TxUpdatedInterval", "readonly": False,
                                                                "value": sim.device_model[("SampledDataCtrlr", None, "TxUpdatedInterval")].value}
        assert listed["EVSE@2.SupplyPhases"]["readonly"] is True

        async def change(key: str, value: str) -> dict[str, Any]:
            mark = sock.mark()
            await sock.send({"type": "change_configuration", "id": "station-1", "key": key, "value": value})
            message = await sock.wait(lambda m: m["type"] == "result" and m["result"]["command"] == "change_configuration", since=mark)
            return dict(message["result"])

        assert (await change("OCPPCommCtrlr.HeartbeatInterval", "120"))["status"] == "Accepted"
        assert sim.device_model[("OCPPCommCtrlr", None, "HeartbeatInterval")].value == "120"
        sent = sim.calls("SetVariables")[-1]["setVariableData"][0]
        assert (sent["component"], sent["variable"], sent["attributeValue"]) == ({"name": "OCPPCommCtrlr"}, {"name": "HeartbeatInterval"}, "120")
        refused = await change("EVSE@2.SupplyPhases", "1")
        assert refused["status"] == "Rejected"
        assert sim.calls("SetVariables")[-1]["setVariableData"][0]["component"] == {"name": "EVSE", "evse": {"id": 2}}
        calls = len(sim.received)
        unknown = await change("EVSE@9.SupplyPhases", "1")  # not in the report: not sent to the station
        assert unknown["status"] == "NotSupported" and "read the configuration first" in unknown["reason"]
        invalid = await change("EVSE@1.Supply Phases", "1")
        assert invalid["status"] == "Invalid" and "device-model key" in invalid["reason"]
        assert len(sim.received) == calls
