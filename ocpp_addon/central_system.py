"""The WebSocket server chargers dial: ``ws[s]://host:port[/prefix]/<charge_point_id>``.

The handshake is where untrusted input is cheapest to refuse: the path must carry
a valid charge point id (it becomes part of MQTT topics, so ``+``, ``#`` and ``/``
never get through), and a client that offers subprotocols must offer
``ocpp1.6``. Chargers that offer none are accepted unless
``ocpp.require_subprotocol`` is set, because many real ones never do.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from .charge_point import ChargePoint
from .config import CHARGER_ID_PATTERN, CHARGER_ID_RE
from .hub import Hub

_LOGGER = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp1.6"
RESERVED_IDS = frozenset({"bridge"})  # <base>/bridge/... is the bridge's own topic tree


def charger_id_from_path(path: str, prefix: str) -> str | None:
    """``/ocpp/wallbox-1?x=1`` with prefix ``/ocpp`` -> ``wallbox-1``; None when not a valid id."""
    path = path.split("?", 1)[0]
    if prefix:
        if not path.startswith(prefix + "/"):
            return None
        path = path[len(prefix):]
    candidate = unquote(path[1:]) if path.startswith("/") else ""
    if not CHARGER_ID_RE.match(candidate) or candidate.lower() in RESERVED_IDS:
        return None
    return candidate


def offered_subprotocols(request: Request) -> list[str]:
    return [p.strip() for header in request.headers.get_all("Sec-WebSocket-Protocol") for p in header.split(",") if p.strip()]


class CentralSystem:
    def __init__(self, config: dict[str, Any], hub: Hub) -> None:
        self.config = config
        self.ocpp = config["ocpp"]
        self.hub = hub
        self.server: Server | None = None

    async def start(self) -> None:
        self.server = await serve(
            self._handle,
            self.ocpp["host"],
            self.ocpp["port"],
            subprotocols=[SUBPROTOCOL],
            select_subprotocol=self._select_subprotocol,
            process_request=self._process_request,
            ping_interval=self.ocpp["ping_interval"],
            ping_timeout=self.ocpp["ping_timeout"],
            max_size=self.ocpp["max_message_size"],
            ssl=self._ssl_context(),
            open_timeout=10,
        )

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
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.ocpp["ssl_certfile"], self.ocpp["ssl_keyfile"])
        return context

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        charger_id = charger_id_from_path(request.path, self.ocpp["path_prefix"])
        if charger_id is None:
            _LOGGER.warning("refused a connection to %r: the path must be %s/<charge point id> with an id matching %s",
                            request.path[:100], self.ocpp["path_prefix"], CHARGER_ID_PATTERN)
            return connection.respond(HTTPStatus.NOT_FOUND, f"expected {self.ocpp['path_prefix']}/<charge point id matching {CHARGER_ID_PATTERN}>\n")
        offered = offered_subprotocols(request)
        if (offered and SUBPROTOCOL not in offered) or (not offered and self.ocpp["require_subprotocol"]):
            _LOGGER.warning("%s: refused: offers subprotocols %s, this central system speaks %s", charger_id, offered or "none", SUBPROTOCOL)
            return connection.respond(HTTPStatus.BAD_REQUEST, f"this central system speaks the {SUBPROTOCOL} subprotocol\n")
        return None

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, subprotocols: Any) -> str | None:
        return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None

    async def _handle(self, ws: ServerConnection) -> None:
        charger_id = charger_id_from_path(ws.request.path, self.ocpp["path_prefix"])
        assert charger_id is not None  # _process_request let it through
        cp = ChargePoint(charger_id, ws, self.hub, self.config)
        old = self.hub.connected.get(charger_id)
        self.hub.charger_connected(cp)  # the newest connection owns the charger from now on
        if old is not None:
            _LOGGER.info("%s: reconnected; closing its previous connection", charger_id)
            asyncio.ensure_future(old._connection.close(1001, "replaced by a newer connection"))
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
