"""Nothing gets in that doesn't belong: OCPP security profiles 1 and 2, unknown chargers,
MQTT TLS and credentials, rate-limited refusal logs, and no secret in any log line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import websockets
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from ocpp_addon import auth, config as config_module
from ocpp_addon.broker import find_mosquitto
from ocpp_addon.hub import READY
from ocpp_addon.simulator import SimOptions, connect

from .conftest import TIMEOUT, MqttProbe, Service, free_port, make_config

MQTT_PASSWORD = "mqtt-Secr3t-Zq"
SHARED_PASSWORD = "shared-Secr3t-Kx"
CP_PASSWORD = "wallbox1-Secr3t-Vb"
PBKDF2_PASSWORD = "pbkdf2-Secr3t-Jw"


def basic(user: str | bytes, password: str | bytes) -> dict[str, str]:
    raw = (user if isinstance(user, bytes) else user.encode()) + b":" + (password if isinstance(password, bytes) else password.encode())
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def handshake_status(service: Service, charger_id: str, headers: dict[str, str] | None = None, **kwargs: Any) -> int:
    """101 when the WebSocket opened (then closed again), else the HTTP status of the refusal."""
    try:
        ws = await websockets.connect(f"{service.url}/{charger_id}", subprotocols=["ocpp1.6"], additional_headers=headers, **kwargs)
    except websockets.InvalidStatus as err:
        return err.response.status_code
    await ws.close()
    return 101


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (openssl; the tests need no extra package)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


# -- Security Profile 1: HTTP Basic auth ------------------------------------------------------

AUTH_CONFIG = {
    "mode": "basic",
    "password": SHARED_PASSWORD,
    "passwords": {
        "wallbox-1": CP_PASSWORD,
        "hashed-sha": "sha256:" + hashlib.sha256(b"sha-pw").hexdigest(),
        "hashed-pbkdf2": auth.hash_password(PBKDF2_PASSWORD, iterations=2000),
    },
}

AUTH_CASES = [
    # (charger id, headers, expected status)
    ("wallbox-1", None, 401),  # no credentials at all
    ("wallbox-1", {"Authorization": "Bearer abc"}, 401),  # not Basic
    ("wallbox-1", {"Authorization": "Basic"}, 401),  # no token
    ("wallbox-1", {"Authorization": "Basic !!!not-base64!!!"}, 401),
    ("wallbox-1", {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, 401),
    ("wallbox-1", basic(b"\xff\xfe", CP_PASSWORD), 401),  # username not UTF-8
    ("wallbox-1", basic("other-cp", CP_PASSWORD), 401),  # right password, someone else's name
    ("wallbox-1", basic("WALLBOX-1", CP_PASSWORD), 401),  # ids are case-sensitive
    ("wallbox-1", basic("wallbox-1", CP_PASSWORD + "x"), 401),
    ("wallbox-1", basic("wallbox-1", ""), 401),
    ("wallbox-1", basic("wallbox-1", SHARED_PASSWORD), 401),  # its own password replaces the shared one
    ("wallbox-1", basic("wallbox-1", CP_PASSWORD), 101),
    ("other-cp", basic("other-cp", SHARED_PASSWORD), 101),  # the shared password for everyone else
    ("other-cp", basic("other-cp", CP_PASSWORD), 401),
    ("hashed-sha", basic("hashed-sha", "sha-pw"), 101),
    ("hashed-sha", basic("hashed-sha", "sha256:" + hashlib.sha256(b"sha-pw").hexdigest()), 401),  # the hash is not the password
    ("hashed-pbkdf2", basic("hashed-pbkdf2", PBKDF2_PASSWORD), 101),
    ("hashed-pbkdf2", basic("hashed-pbkdf2", "wrong"), 401),
]


async def test_basic_auth_matrix(service_factory, caplog: pytest.LogCaptureFixture) -> None:
    service = await service_factory(ocpp={"auth": AUTH_CONFIG})
    for charger_id, headers, expected in AUTH_CASES:
        assert await handshake_status(service, charger_id, headers) == expected, (charger_id, headers)
    # the 401 says how to authenticate
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(f"{service.url}/wallbox-1", subprotocols=["ocpp1.6"])
    assert err.value.response.headers["WWW-Authenticate"].startswith('Basic realm="ocpp"')
    # a charger with credentials in its URL (ws://id:password@host/id), as many firmwares are configured
    sim, task = await connect(f"ws://wallbox-1:{CP_PASSWORD}@127.0.0.1:{service.config['ocpp']['port']}", "wallbox-1", SimOptions(meter_interval=0))
    service.chargers.append((sim, task))
    await service.wait_event(READY, "wallbox-1")
    assert "wallbox-1" in service.app.hub.connected
    assert not any(secret in caplog.text for secret in (CP_PASSWORD, SHARED_PASSWORD, PBKDF2_PASSWORD, "sha-pw"))


async def test_a_verified_pbkdf2_password_is_remembered_not_recomputed(service_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    service = await service_factory(ocpp={"auth": {"mode": "basic", "passwords": {"cp": auth.hash_password("pw", iterations=2000)}}})
    calls: list[bytes] = []
    original = auth.verify

    def counting(password: bytes, stored: str) -> bool:
        calls.append(password)
        return original(password, stored)

    monkeypatch.setattr(auth, "verify", counting)
    for _ in range(3):
        assert await handshake_status(service, "cp", basic("cp", "pw")) == 101
    for _ in range(3):
        assert await handshake_status(service, "cp", basic("cp", "nope")) == 401
    # One PBKDF2 for the first success, reconnects cost a fast digest; a wrong guess costs one PBKDF2
    # (as long as for an unknown id: equal work), and repeating it costs nothing more.
    assert calls == [b"pw", b"nope"]
    assert "cp" in service.app.central_system.auth._verified


def test_password_forms_and_the_hash_command() -> None:
    stored = auth.hash_password("s3cret", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert auth.verify(b"s3cret", stored) and not auth.verify(b"s3cret ", stored)
    assert auth.verify(b"plain", "plain") and not auth.verify(b"Plain", "plain")
    assert auth.verify(b"x", "sha256:" + hashlib.sha256(b"x").hexdigest().upper())
    for bad in ("sha256:1234", "pbkdf2_sha256$x$salt$hash", "pbkdf2_sha256$10$$" + base64.b64encode(b"0" * 32).decode(), "pbkdf2_sha256$10$s$!!"):
        with pytest.raises(ValueError) as err:
            auth.check_stored(bad)
        assert bad not in str(err.value)
    out = subprocess.run([sys.executable, "-m", "ocpp_addon.auth", "--stdin", "--iterations", "1000"], input="hunter2\n",
                         capture_output=True, text=True, timeout=60, check=True)
    made = out.stdout.strip()
    assert auth.verify(b"hunter2", made) and "hunter2" not in made


@pytest.mark.parametrize(
    "header",
    [None, "", "Basic", "Basic ", "basic " + base64.b64encode(b"a:b").decode(), "Basic =", "Basic " + "A" * 10000,
     "Digest username=x", "Basic " + base64.b64encode(b":").decode(), "Basic " + base64.b64encode("ü:ö".encode()).decode()],
)
def test_parse_basic_never_raises(header: str | None) -> None:
    result = auth.parse_basic(header)
    assert result is None or (isinstance(result[0], str) and isinstance(result[1], bytes))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"auth": {"mode": "basic"}}, "set ocpp.auth.password"),
        ({"auth": {"password": "x"}}, "set ocpp.auth.mode to 'basic'"),
        ({"auth": {"mode": "basic", "passwords": {"a b": "SECRETVALUE"}}}, "is not a charge point id"),
        ({"auth": {"mode": "basic", "passwords": {"cp": "sha256:SECRETVALUE"}}}, "64 hex digits"),
        ({"auth": {"mode": "basic", "password": "pbkdf2_sha256$SECRETVALUE"}}, "pbkdf2_sha256$<iterations>"),
        ({"auth": {"mode": "basic", "passwords": [{"id": "cp", "pw": "SECRETVALUE"}]}}, "entry 0"),
        ({"auth": {"mode": "digest"}}, "ocpp.auth.mode"),
        ({"chargers": ["ok", "not ok"]}, "ocpp.chargers.1"),
        ({"max_connections": 0}, "ocpp.max_connections"),
        ({"open_timeout": 0}, "ocpp.open_timeout"),
    ],
)
def test_security_config_errors_name_the_key_and_never_echo_a_password(raw: dict, message: str) -> None:
    with pytest.raises(config_module.ConfigError) as err:
        config_module.validate({"ocpp": raw})
    assert message in str(err.value)
    assert "SECRETVALUE" not in str(err.value)


def test_add_on_list_form_and_redaction() -> None:
    config = config_module.validate({
        "ocpp": {"auth": {"mode": "basic", "passwords": [{"id": "cp-1", "password": "pw-one"}, {"id": "cp-2", "password": "pw-two"}]}},
        "mqtt": {"password": "mqtt-pw", "ca_certs": "", "certfile": None},
    })
    assert config["ocpp"]["auth"]["passwords"] == {"cp-1": "pw-one", "cp-2": "pw-two"}
    assert config["mqtt"]["ca_certs"] is None  # the add-on UI's empty field means unset
    text = repr(config_module.redacted(config))
    assert not any(secret in text for secret in ("pw-one", "pw-two", "mqtt-pw"))


# -- Unknown chargers and rate-limited refusal logs ---------------------------------------------------


async def test_unknown_chargers_are_refused_with_one_log_line(service_factory, caplog: pytest.LogCaptureFixture) -> None:
    service = await service_factory(ocpp={"allow_unknown_chargers": False, "chargers": ["listed-1"]})
    assert await handshake_status(service, "listed-1") == 101
    for _ in range(5):
        assert await handshake_status(service, "stranger") == 404
    assert await handshake_status(service, "a+b") == 404  # a bad id from the same address: also held back
    refused = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    assert "stranger" in refused[0].getMessage() and "allow_unknown_chargers" in refused[0].getMessage()
    assert "stranger" not in service.app.hub.states and "stranger" not in service.app.store.chargers


async def test_unknown_policy_with_passwords_answers_401_before_404(service_factory) -> None:
    service = await service_factory(ocpp={"allow_unknown_chargers": False, "auth": {"mode": "basic", "passwords": {"cp-pw": "pw"}, "password": "shared"}})
    assert await handshake_status(service, "cp-pw", basic("cp-pw", "pw")) == 101  # an id with a password is known
    assert await handshake_status(service, "stranger") == 401  # no credentials: nothing is revealed about the id
    assert await handshake_status(service, "stranger", basic("stranger", "wrong")) == 401
    assert await handshake_status(service, "stranger", basic("stranger", "shared")) == 404


def test_rate_limited_log_counts_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    from ocpp_addon.central_system import RateLimitedLog

    log = RateLimitedLog(logging.getLogger("test.ratelimit"), interval=60.0, max_keys=3)
    with caplog.at_level(logging.WARNING, "test.ratelimit"):
        for _ in range(10):
            log.warning("10.0.0.1", "refused %s", "x")
        log.warning("10.0.0.2", "refused %s", "y")
        assert len(caplog.records) == 2
        log._seen["10.0.0.1"][0] -= 61  # a minute later
        log.warning("10.0.0.1", "refused %s", "x")
    assert caplog.records[-1].getMessage() == "refused x (9 more refused from this address since the last such line)"
    before = len(caplog.records)
    with caplog.at_level(logging.WARNING, "test.ratelimit"):
        for n in range(100):  # refusals from many addresses: memory and log lines stay bounded
            log.warning(f"10.1.{n}.1", "refused")
    assert len(log._seen) <= log.max_keys + 1 and len(caplog.records) - before <= 2


# -- Handshake limits -------------------------------------------------------------------------------------


async def test_too_many_connections_get_503_and_the_cap_frees_up(service_factory) -> None:
    service = await service_factory(ocpp={"max_connections": 2})
    await service.charger("cp-1")
    second = await service.charger("cp-2")
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(f"{service.url}/cp-3", subprotocols=["ocpp1.6"])
    assert err.value.response.status_code == 503 and err.value.response.headers["Retry-After"] == "60"
    # a charger replacing its own connection is never locked out by the cap
    again = await service.charger("cp-2")
    await asyncio.wait_for(second._connection.wait_closed(), TIMEOUT)
    assert service.app.hub.connected["cp-2"] is not None and again is not second
    await again._connection.close()
    await asyncio.wait_for(again._connection.wait_closed(), TIMEOUT)

    async def third_gets_in() -> None:
        while await handshake_status(service, "cp-3") != 101:  # the slot is released when the socket is closed
            await asyncio.sleep(0.05)

    await asyncio.wait_for(third_gets_in(), TIMEOUT)


@pytest.mark.parametrize("with_auth", [False, True], ids=["no-auth", "pbkdf2-auth"])
async def test_concurrent_handshakes_cannot_overshoot_the_cap(service_factory, with_auth: bool) -> None:
    # with PBKDF2 the password check yields to the loop in the middle of every handshake
    auth_config = {"mode": "basic", "password": auth.hash_password("pw", iterations=20000)} if with_auth else {"mode": "none"}
    service = await service_factory(ocpp={"max_connections": 3, "auth": auth_config})

    async def dial(n: int) -> Any:
        try:
            return await websockets.connect(f"{service.url}/cp-{n}", subprotocols=["ocpp1.6"], additional_headers=basic(f"cp-{n}", "pw"))
        except websockets.InvalidStatus as err:
            return err.response.status_code

    results = await asyncio.gather(*(dial(n) for n in range(12)))
    opened = [r for r in results if not isinstance(r, int)]
    assert len(opened) == 3 and all(r == 503 for r in results if isinstance(r, int))
    for ws in opened:
        await ws.close()


@pytest.mark.parametrize("partial", [b"", b"GET /wallbox-1 HTTP/1.1\r\nHost: x\r\n", b"GET /wallbox-1 HT"])
async def test_slow_or_incomplete_handshakes_are_cut_after_open_timeout(service_factory, partial: bytes) -> None:
    service = await service_factory(ocpp={"open_timeout": 1})
    reader, writer = await asyncio.open_connection("127.0.0.1", service.config["ocpp"]["port"])
    writer.write(partial)
    await writer.drain()
    started = asyncio.get_running_loop().time()
    try:
        data = await asyncio.wait_for(reader.read(), TIMEOUT)  # EOF: the server hung up
    except ConnectionResetError:
        data = b""
    elapsed = asyncio.get_running_loop().time() - started
    assert data == b"" and 0.5 <= elapsed < TIMEOUT
    writer.close()
    # the service is not hurt: a real charger still gets in
    await service.charger("wallbox-1")


# -- Security Profile 2: TLS ----------------------------------------------------------------------------------


async def test_wss_with_tls_12_plus_and_basic_auth(service_factory, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path / "tls")
    service = await service_factory(ocpp={"ssl_certfile": str(cert), "ssl_keyfile": str(key),
                                          "auth": {"mode": "basic", "password": SHARED_PASSWORD}})
    port = service.config["ocpp"]["port"]
    assert service.app.central_system.scheme == "wss"
    client = ssl.create_default_context(cafile=str(cert))
    ws = await websockets.connect(f"wss://127.0.0.1:{port}/cp-tls", ssl=client, subprotocols=["ocpp1.6"],
                                  additional_headers=basic("cp-tls", SHARED_PASSWORD))
    assert ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    await ws.send(json.dumps([2, "1", "Heartbeat", {}]))
    assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))[:2] == [3, "1"]
    await ws.close()
    # TLS does not replace the password (profile 2 = TLS + Basic auth)
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(f"wss://127.0.0.1:{port}/cp-tls", ssl=client, subprotocols=["ocpp1.6"])
    assert err.value.response.status_code == 401
    # TLS 1.1 and older are refused
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, OSError, websockets.InvalidHandshake)):
        await websockets.connect(f"wss://127.0.0.1:{port}/cp-tls", ssl=old, subprotocols=["ocpp1.6"],
                                 additional_headers=basic("cp-tls", SHARED_PASSWORD), open_timeout=TIMEOUT)
    # plain ws against the TLS port gets nowhere, and the server keeps serving
    with pytest.raises((websockets.InvalidHandshake, websockets.InvalidMessage, OSError, EOFError, asyncio.TimeoutError)):
        await websockets.connect(f"ws://127.0.0.1:{port}/cp-tls", subprotocols=["ocpp1.6"], open_timeout=5)
    ws = await websockets.connect(f"wss://127.0.0.1:{port}/cp-tls", ssl=client, subprotocols=["ocpp1.6"],
                                  additional_headers=basic("cp-tls", SHARED_PASSWORD))
    await ws.close()


# -- MQTT TLS and credentials ------------------------------------------------------------------------------------


class TlsBroker:
    """mosquitto with a TLS listener, no anonymous access and one user."""

    def __init__(self, directory: Path, user: str, password: str) -> None:
        self.dir = directory
        self.port = free_port()
        self.cert, self.key = make_cert(directory / "certs")
        passwd = directory / "passwd"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), user, password], check=True, capture_output=True, timeout=30)
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\ncertfile {self.cert}\nkeyfile {self.key}\n"
            f"allow_anonymous false\npassword_file {passwd}\npersistence false\nlog_dest file {directory}/mosquitto.log\n"
            + ("user root\n" if os.geteuid() == 0 else ""),
            encoding="utf-8",
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = find_mosquitto()
        assert binary, "mosquitto is not installed"
        self.process = await asyncio.create_subprocess_exec(binary, "-c", str(self.conf), stdout=asyncio.subprocess.DEVNULL,
                                                            stderr=asyncio.subprocess.DEVNULL)

        async def answers() -> None:
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                except OSError:
                    assert self.process is not None and self.process.returncode is None, (self.dir / "mosquitto.log").read_text()
                    await asyncio.sleep(0.05)

        await asyncio.wait_for(answers(), TIMEOUT)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


async def _tls_probe_retained(broker: TlsBroker, user: str, password: str, topic: str) -> bytes:
    """Read one retained message over TLS with credentials (a second, independent client)."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tls-probe-{free_port()}")
    client.username_pw_set(user, password)
    client.tls_set_context(ssl.create_default_context(cafile=str(broker.cert)))
    client.on_connect = lambda c, *a: c.subscribe(topic, 1)
    client.on_message = lambda c, u, m: loop.call_soon_threadsafe(lambda: got.done() or got.set_result(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        return await asyncio.wait_for(got, TIMEOUT)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_mqtt_over_tls_with_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    broker = TlsBroker(tmp_path / "tls-broker", "ocpp", MQTT_PASSWORD)
    await broker.start()
    services: list[Service] = []
    try:
        good = Service(make_config(broker.port, tmp_path / "good", mqtt={"ca_certs": str(broker.cert), "username": "ocpp", "password": MQTT_PASSWORD}))
        services.append(good)
        await good.start()
        await good.charger("wallbox-1")
        assert await _tls_probe_retained(broker, "ocpp", MQTT_PASSWORD, "ocpp/wallbox-1/availability") == b"online"
        assert good.app.mqtt.client._ssl_context.minimum_version >= ssl.TLSVersion.TLSv1_2  # noqa: SLF001

        # wrong password, unverifiable certificate: never connected, one clear line each, OCPP still served
        wrong = Service(make_config(broker.port, tmp_path / "wrong", mqtt={"ca_certs": str(broker.cert), "username": "ocpp", "password": "not-it"}))
        untrusted = Service(make_config(broker.port, tmp_path / "untrusted", mqtt={"ssl": True, "username": "ocpp", "password": MQTT_PASSWORD}))
        insecure = Service(make_config(broker.port, tmp_path / "insecure", mqtt={"ssl": True, "tls_insecure": True, "username": "ocpp", "password": MQTT_PASSWORD}))
        for svc in (wrong, untrusted, insecure):
            services.append(svc)
            await svc.app.start()
        await asyncio.wait_for(insecure.app.mqtt.connected.wait(), TIMEOUT)
        await wrong.charger("cp-wrong")  # the OCPP side does not depend on MQTT

        def refused_lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "ocpp_addon.mqtt_bridge" and r.levelno >= logging.WARNING]

        async def until_both_refusals_logged() -> None:
            while not (any("refused the connection" in m for m in refused_lines()) and any("not trusted" in m for m in refused_lines())):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(until_both_refusals_logged(), TIMEOUT)
        assert not wrong.app.mqtt.connected.is_set() and not untrusted.app.mqtt.connected.is_set()
        assert MQTT_PASSWORD not in caplog.text and "not-it" not in caplog.text
    finally:
        for svc in services:
            await svc.stop()
        await broker.stop()


async def test_a_burst_of_commands_over_tls_is_read_whole(tmp_path: Path) -> None:
    """The loop-driven client's TLS read path under a burst: 30 setpoints sent back to back (for chargers
    never seen, so each is answered at once) get 30 answers. (It also reads what TLS has already
    decrypted, which leaves the socket unreadable; mosquitto sends one TLS record per packet, so that
    case does not arise here.)"""
    broker = TlsBroker(tmp_path / "tls-broker", "ocpp", MQTT_PASSWORD)
    await broker.start()
    service = Service(make_config(broker.port, tmp_path, mqtt={"ca_certs": str(broker.cert), "username": "ocpp", "password": MQTT_PASSWORD}))
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tls-burst-{free_port()}")
    try:
        await service.start()
        sender.username_pw_set("ocpp", MQTT_PASSWORD)
        sender.tls_set_context(ssl.create_default_context(cafile=str(broker.cert)))
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        infos = [sender.publish(f"ocpp/burst-{i}/charging_limit/set", "16", qos=1) for i in range(30)]
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, TIMEOUT)
        for i in range(30):
            event = await service.wait_event("result", f"burst-{i}")
            assert event.data["status"] == "UnknownCharger" and event.data["limit"] == 16
    finally:
        sender.disconnect()
        sender.loop_stop()
        await service.stop()
        await broker.stop()


# -- no secret in any log line ------------------------------------------------------------------------------------------


def _secrets() -> list[str]:
    tokens = [basic(cid, pw)["Authorization"].split()[1] for cid, pw in (("wallbox-1", CP_PASSWORD), ("other-cp", SHARED_PASSWORD), ("wallbox-1", "wrong-Secr3t"))]
    return [MQTT_PASSWORD, SHARED_PASSWORD, CP_PASSWORD, PBKDF2_PASSWORD, "wrong-Secr3t", *tokens]


async def _exercise_auth(port: int) -> None:
    """Good and bad credentials, and a bit of traffic on the good connections."""
    url = f"ws://127.0.0.1:{port}"
    for cid, pw in (("wallbox-1", "wrong-Secr3t"), ("other-cp", CP_PASSWORD)):
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(f"{url}/{cid}", subprotocols=["ocpp1.6"], additional_headers=basic(cid, pw))
    for cid, pw in (("wallbox-1", CP_PASSWORD), ("other-cp", SHARED_PASSWORD), ("hashed", PBKDF2_PASSWORD)):
        ws = await websockets.connect(f"{url}/{cid}", subprotocols=["ocpp1.6"], additional_headers=basic(cid, pw))
        await ws.send(json.dumps([2, "b1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]))
        await asyncio.wait_for(ws.recv(), TIMEOUT)
        await ws.close()


async def test_no_secret_in_any_log_line_even_at_debug(broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    noisy = ("websockets", "ocpp", "paho", "ocpp_addon", "asyncio")
    levels = {name: logging.getLogger(name).level for name in noisy}
    caplog.set_level(logging.DEBUG)
    for name in noisy:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        config = make_config(broker.port, tmp_path, log_level="debug", mqtt={"username": "ocpp", "password": MQTT_PASSWORD},
                             ocpp={"auth": {"mode": "basic", "password": SHARED_PASSWORD,
                                            "passwords": {"wallbox-1": CP_PASSWORD, "hashed": auth.hash_password(PBKDF2_PASSWORD, iterations=1000)}}})
        service = Service(config)
        await service.start()
        try:
            await _exercise_auth(config["ocpp"]["port"])
            await service.wait_event(READY, "hashed")
        finally:
            await service.stop()
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    # the test's own clients (websockets.client) log what they send; everything else is the service
    records = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in records)
    assert "Authorization" in text  # websockets did log the header at DEBUG ...
    assert "[redacted]" in text  # ... but not its value
    leaked = [s for s in _secrets() if s in text]
    assert not leaked


async def test_no_secret_in_the_service_output_across_a_run(broker, probe: MqttProbe, tmp_path: Path) -> None:
    config = {
        "log_level": "debug",
        "data_dir": str(tmp_path / "data"),
        "ocpp": {"host": "127.0.0.1", "port": free_port(),
                 "auth": {"mode": "basic", "password": SHARED_PASSWORD,
                          "passwords": {"wallbox-1": CP_PASSWORD, "hashed": auth.hash_password(PBKDF2_PASSWORD, iterations=1000)}}},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "embedded_broker": False, "username": "ocpp", "password": MQTT_PASSWORD},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("CONNECTOR_NAME", "SUPERVISOR_TOKEN")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", "--config", str(path),
                                                stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
    assert proc.stderr is not None
    output: list[str] = []

    async def until(marker: str) -> None:
        while marker not in "".join(output):
            line = (await proc.stderr.readline()).decode()
            assert line, "service exited:\n" + "".join(output)
            output.append(line)

    try:
        await asyncio.wait_for(until("ready:"), TIMEOUT)
        await _exercise_auth(config["ocpp"]["port"])
        await asyncio.wait_for(until("hashed: booted"), TIMEOUT)
        probe.publish("ocpp/wallbox-1/charging_limit/set", "16")
        await probe.wait_json("ocpp/wallbox-1/event", lambda d: d["status"] in ("Queued", "Offline", "Accepted"))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    text = "".join(output) + rest.decode()
    assert proc.returncode == 0, text
    assert "refused a connection" in text and "DEBUG" in text
    leaked = [s for s in _secrets() if s in text]
    assert not leaked, text
