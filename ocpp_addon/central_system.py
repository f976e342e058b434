"""The WebSocket server chargers dial: ``ws[s]://host:port[/prefix]/<charge_point_id>``.

The handshake is where untrusted input is cheapest to refuse, so every check
happens there, before a charger touches any state, in this order:

1. the path must carry a valid charge point id (it becomes part of MQTT topics,
   so ``+``, ``#`` and ``/`` never get through): 404;
2. a client that offers subprotocols must offer one we speak (``ocpp.versions``:
   ``ocpp2.0.1``, ``ocpp1.6``; the first in that order that it offers is chosen,
   unless ``ocpp.charger_versions`` names one for it); one that offers none is
   spoken to in 1.6 unless ``ocpp.require_subprotocol``, because many real ones never
   offer: 400;
3. no more than ``ocpp.max_connections`` open connections (a charger replacing its
   own connection always gets in): 503 with ``Retry-After``;
4. OCPP Security Profile 1 (``ocpp.auth.mode: basic``): HTTP Basic credentials,
   username = charge point id (see :mod:`.auth`): 401 with ``WWW-Authenticate``;
5. ``ocpp.allow_unknown_chargers: false``: only ids in ``ocpp.chargers`` or with a
   password: 404 (checked after the password, so the answer tells a stranger
   nothing about which ids exist).

Refusals are logged one line per remote address per minute: a misconfigured
charger redialling every few seconds, or a scanner, must not flood the log.
Security Profile 2 is ``ocpp.ssl_certfile``/``ssl_keyfile`` (wss, TLS 1.2+) plus 4.

Dead connections (a charger losing power sends no close frame) are found by
WebSocket pings: a gone charger shows as offline after at most
``ping_interval`` + 2 x ``ping_timeout`` (the second one capped at 10 s: the wait
for a closing handshake it will never send). Handshakes that stall are cut after
``ocpp.open_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from http import HTTPStatus
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Close, CloseCode
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .auth import REALM, Authenticator
from .charge_point import ChargePoint
from .charge_point_v201 import ChargePoint201
from .topics import CHARGER_ID_PATTERN, is_usable_charger_id, printable
from .hub import Hub

_LOGGER = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp1.6"
#: subprotocol -> the class that speaks it
PROTOCOLS: dict[str, type[ChargePoint]] = {"ocpp2.0.1": ChargePoint201, "ocpp1.6": ChargePoint}
REFUSAL_LOG_INTERVAL = 60.0
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


# A load balancer's health check (HAProxy ``option httpchk``): two path levels, so no charge point id
# (one level, never '/') and no path prefix can collide with it; answered without a log line.
HEALTH_PATH = "/-/health"


def charger_id_from_path(path: str, prefix: str) -> str | None:
    """``/ocpp/wallbox-1?x=1`` with prefix ``/ocpp`` -> ``wallbox-1``; None when not a valid id."""
    path = path.split("?", 1)[0]
    if prefix:
        if not path.startswith(prefix + "/"):
            return None
        path = path[len(prefix):]
    candidate = unquote(path[1:]) if path.startswith("/") else ""
    if not is_usable_charger_id(candidate):
        return None
    return candidate


def offered_subprotocols(request: Request) -> list[str]:
    return [p.strip() for header in request.headers.get_all("Sec-WebSocket-Protocol") for p in header.split(",") if p.strip()]


class RateLimitedLog:
    """At most one line per key (a remote address) per ``interval``; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, interval: float = REFUSAL_LOG_INTERVAL, max_keys: int = 4096) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict[str, list[float]] = {}  # key -> [time of the last line, lines held back since]

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if key not in self._seen and len(self._seen) >= self.max_keys:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
            if len(self._seen) >= self.max_keys - 1:
                key = "*"  # refusals from very many addresses at once: one line a minute for all of them
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return
        held_back = int(entry[1]) if entry is not None else 0
        self._seen[key] = [now, 0]
        if held_back:
            msg += " (%d more refused from this address since the last such line)"
            args = (*args, held_back)
        self.logger.warning(msg, *args)


class _RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets logs every request header at DEBUG, and Authorization carries the charger's password."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if msg == "< %s: %s" and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            args = (args[0], "[redacted]")
        super().log(level, msg, *args, **kwargs)


class _Connection:
    """The socket as a ChargePoint sees it. Once retired (a newer connection with the same
    id took over) it delivers and sends nothing more, so frames still in flight on the old
    socket never reach the charger's state: two connections never write into one charger."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.retired = False

    async def recv(self) -> str | bytes:
        frame = await self.ws.recv()
        if self.retired:
            raise ConnectionClosedOK(None, Close(CloseCode.GOING_AWAY, "replaced by a newer connection"))
        return frame

    def send(self, message: str | bytes) -> Awaitable[None]:
        """websockets' send, for the caller to await (no coroutine of its own around it: one less per frame)."""
        if self.retired:
            raise ConnectionClosedOK(None, Close(CloseCode.GOING_AWAY, "replaced by a newer connection"))
        return self.ws.send(message)

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        await self.ws.close(code, reason)

    def backlog(self) -> int:
        """Frames the charger sent that we have not read yet (websockets' receive queue)."""
        frames = getattr(getattr(self.ws, "recv_messages", None), "frames", None)
        try:
            return len(frames)  # type: ignore[arg-type]
        except TypeError:  # another websockets layout: assume none, so a charger is slowed, never cut off
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ws, name)


class _WatchedConnection(ServerConnection):
    """A connection whose peer stopped reading is dropped, not kept forever.

    When the charger stops reading, our writes pile up until the transport pauses
    writing; from then on every send, and websockets' own keepalive ping, waits for
    a drain that never comes, so the ping timeout never fires and commands never
    end. Writes that stay paused for ``stall_timeout`` seconds abort the transport:
    the charger goes offline and every command waiting on it ends with an event.
    """

    stall_timeout = 20.0
    _stall: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(self.stall_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        super().connection_lost(exc)

    def _stalled(self) -> None:
        self._stall = None
        path = self.request.path if self.request is not None else "?"
        _LOGGER.warning("%s: dropped the connection: it has not read what we sent for %g s (%d bytes waiting)",
                        printable(path.rsplit("/", 1)[-1], 80), self.stall_timeout, self.transport.get_write_buffer_size())
        self.transport.abort()


class CentralSystem:
    def __init__(self, config: dict[str, Any], hub: Hub) -> None:
        self.config = config
        self.ocpp = config["ocpp"]
        self.hub = hub
        self.server: Server | None = None
        self.auth = Authenticator(self.ocpp)
        self.refusals = RateLimitedLog(_LOGGER)
        self._admitted: set[ServerConnection] = set()  # passed every check, not closed yet
        self._watchers: set[asyncio.Task[None]] = set()
        # What a load balancer's health check asks (GET HEALTH_PATH): None when this instance can serve
        # chargers, else why not. Set by the app (the MQTT connection); None here means always healthy.
        self.health: Callable[[], str | None] | None = None

    async def start(self) -> None:
        watched = type("WatchedConnection", (_WatchedConnection,), {"stall_timeout": self.ocpp["ping_timeout"]})
        self.server = await serve(
            self._handle,
            self.ocpp["host"],
            self.ocpp["port"],
            create_connection=watched,
            subprotocols=[Subprotocol(f"ocpp{version}") for version in self.ocpp["versions"]],
            select_subprotocol=self._select_subprotocol,
            process_request=self._process_request,
            ping_interval=self.ocpp["ping_interval"],
            ping_timeout=self.ocpp["ping_timeout"],
            # After a missed pong websockets still waits close_timeout for the closing
            # handshake of a peer it just declared dead; keep that wait short.
            close_timeout=min(self.ocpp["ping_timeout"], 10.0),
            max_size=self.ocpp["max_message_size"],
            ssl=self._ssl_context(),
            open_timeout=self.ocpp["open_timeout"],
            logger=_RedactingLogger(logging.getLogger("websockets.server"), {}),
        )
        self._log_policy()

    def _log_policy(self) -> None:
        if self.auth.required:
            profile = 2 if self.ocpp["ssl_certfile"] else 1
            _LOGGER.info("chargers authenticate with HTTP Basic (OCPP security profile %d)%s", profile,
                         "" if profile == 2 else "; without TLS the password crosses the network readable, use wss where you can")
        if not self.auth.allow_unknown and not self.auth.known_ids:
            _LOGGER.warning("ocpp.allow_unknown_chargers is false and no charge point is listed in ocpp.chargers: every charger will be refused")

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def scheme(self) -> str:
        return "wss" if self.ocpp["ssl_certfile"] else "ws"

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.ocpp["ssl_certfile"]:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # OCPP security profile 2 requires TLS 1.2 or later
        context.load_cert_chain(self.ocpp["ssl_certfile"], self.ocpp["ssl_keyfile"])
        return context

    # -- the handshake ------------------------------------------------------------

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, body: str, why: str, *args: Any) -> Response:
        address = connection.remote_address[0] if connection.remote_address else "?"
        self.refusals.warning(address, "refused a connection from %s: " + why, address, *args)
        return connection.respond(status, body)

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return await self._check_request(connection, request)
        except Exception as err:  # noqa: BLE001 - a request we did not foresee gets one line, not a traceback
            self._admitted.discard(connection)
            return self._refuse(connection, HTTPStatus.BAD_REQUEST, "bad request\n", "cannot handle the request for %r (%s: %s)",
                                printable(request.path, 100), type(err).__name__, printable(str(err), 100))

    async def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == HEALTH_PATH and "upgrade" not in request.headers.get("Connection", "").lower():
            problem = self.health() if self.health is not None else None
            if problem is None:
                return connection.respond(HTTPStatus.OK, "ok\n")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{problem}\n")
        prefix = self.ocpp["path_prefix"]
        charger_id = charger_id_from_path(request.path, prefix)
        if charger_id is None:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, f"expected {prefix}/<charge point id matching {CHARGER_ID_PATTERN}>\n",
                                "the path %r must be %s/<charge point id> with an id matching %s", request.path[:100], prefix, CHARGER_ID_PATTERN)
        offered = offered_subprotocols(request)
        ours = self._subprotocols_for(charger_id)
        if (offered and not set(ours) & set(offered)) or (not offered and self.ocpp["require_subprotocol"]):
            spoken = " or ".join(ours)
            return self._refuse(connection, HTTPStatus.BAD_REQUEST, f"this central system speaks the {spoken} subprotocol\n",
                                "%s offers subprotocols %s, this central system speaks %s to it", charger_id,
                                ",".join(printable(p, 40) for p in offered[:5]) or "none", spoken)
        if len(self._admitted) >= self.ocpp["max_connections"] and charger_id not in self.hub.connected:
            response = self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, "too many connections; try again later\n",
                                    "%s: ocpp.max_connections (%d) reached", charger_id, self.ocpp["max_connections"])
            response.headers["Retry-After"] = "60"
            return response
        # Hold the slot while the password is checked (PBKDF2 yields to the loop), so that
        # concurrent handshakes cannot all pass the count above.
        self._admitted.add(connection)
        self._background(self._release_when_closed(connection))
        try:
            authorization = request.headers.get_all("Authorization")
            if len(authorization) > 1 and self.auth.required:
                failure: str | None = "more than one Authorization header"
            else:
                failure = await self.auth.check(charger_id, authorization[0] if authorization else None,
                                                connection.remote_address[0] if connection.remote_address else "?")
        except BaseException:
            self._admitted.discard(connection)
            raise
        if failure is not None:
            self._admitted.discard(connection)
            response = self._refuse(connection, HTTPStatus.UNAUTHORIZED, "charge point credentials required (HTTP Basic, username = charge point id)\n",
                                    "%s: %s", charger_id, failure)
            response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
            return response
        if not self.auth.is_known(charger_id):
            self._admitted.discard(connection)
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "unknown charge point\n",
                                "%s is not in ocpp.chargers and ocpp.allow_unknown_chargers is false", charger_id)
        return None

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _release_when_closed(self, connection: ServerConnection) -> None:
        await connection.wait_closed()
        self._admitted.discard(connection)

    def _subprotocols_for(self, charger_id: str) -> list[str]:
        """The subprotocols we speak to this charger, preferred first."""
        only = self.ocpp["charger_versions"].get(charger_id)
        return [f"ocpp{only}"] if only else [f"ocpp{version}" for version in self.ocpp["versions"]]

    def _select_subprotocol(self, connection: ServerConnection, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        charger_id = charger_id_from_path(connection.request.path, self.ocpp["path_prefix"]) if connection.request else None
        ours = self._subprotocols_for(charger_id) if charger_id else [f"ocpp{version}" for version in self.ocpp["versions"]]
        return next((Subprotocol(protocol) for protocol in ours if protocol in subprotocols), None)

    # -- one connection ---------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # the handler runs after the handshake
        charger_id = charger_id_from_path(ws.request.path, self.ocpp["path_prefix"])
        assert charger_id is not None  # _process_request let it through
        connection = _Connection(ws)
        cp = PROTOCOLS.get(ws.subprotocol or SUBPROTOCOL, ChargePoint)(charger_id, connection, self.hub, self.config)
        old = self.hub.connected.get(charger_id)
        self.hub.charger_connected(cp)  # the newest connection owns the charger from now on
        if old is not None:
            _LOGGER.info("%s: reconnected; closing its previous connection", charger_id)
            if isinstance(old._connection, _Connection):
                old._connection.retired = True
            self._background(old._connection.close(CloseCode.GOING_AWAY, "replaced by a newer connection"))
        _LOGGER.info("%s: connected from %s", charger_id, ws.remote_address[0] if ws.remote_address else "?")
        boot_wait = asyncio.create_task(cp.wait_for_boot())
        try:
            await cp.start()
        finally:
            boot_wait.cancel()
            self.hub.charger_disconnected(cp)
            for task in list(cp._after_tasks):
                task.cancel()
            _LOGGER.info("%s: disconnected (%s)", charger_id, ws.close_code if ws.close_code is not None else "connection lost")

    async def close(self) -> None:
        """Close every charger connection (1001 going away) and stop listening."""
        if self.server is None:
            return
        self.server.close(close_connections=True)
        await self.server.wait_closed()
        for watcher in list(self._watchers):
            watcher.cancel()
