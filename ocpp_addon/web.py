"""The chargers page: one page (Home Assistant's sidebar through ingress, or standalone) that shows
every charger, its live OCPP frames and last error, and offers its controls and configuration keys.

Served by aiohttp (Home Assistant's own HTTP library); the page is plain HTML/CSS/JS from
``ocpp_addon/static`` and talks to us over one WebSocket with JSON messages.

Who may connect:

* add-on (``web.ingress``): only the Supervisor's ingress proxy (``web.ingress_proxy``,
  172.30.32.2), which has already authenticated the Home Assistant user; every URL the page uses
  is relative to the ``X-Ingress-Path`` the proxy sends, so the page works under
  ``/api/hassio_ingress/<token>/``;
* standalone: off unless ``web.enabled``; then bound to ``web.host`` and behind HTTP Basic
  authentication with ``web.password`` (the browser's own prompt), and a WebSocket is accepted
  only from a page of the same origin (another site cannot ride on the browser's credentials).

What it costs when nobody has it open: the sink ignores state events while no browser is
connected, and frames are captured only while one is (the hub's ``frame_tap`` is None
otherwise, one attribute check per frame). Frames live in a bounded buffer per charger in
memory; nothing is written to disk.

Commands from the page run the MQTT command topics' own functions (``homeassistant.COMMANDS``:
the same parsing, the same checks, the same hub calls), and their results come back as the
hub's RESULT events, as they do for the MQTT event topic. Reading the configuration keys is
the exception: its answer goes to the asking page only (see ``_get_configuration``).
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import logging
import re
import time
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web

from . import __version__, ocpp201
from .auth import PagePassword
from .entities import state_values
from .homeassistant import COMMANDS
from .hub import CONNECTED, DISCONNECTED, IDENTIFIED, READY, REMOVED, RESULT, UPDATED, Event, Hub
from .logs import LogBudget
from .profiles import SetpointError
from .state import ChargerState
from .strict_json import loads as strict_loads
from .topics import is_charger_id, printable

_LOGGER = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
# What the Supervisor may send as X-Ingress-Path: /api/hassio_ingress/<token>. Anything else is ignored.
_INGRESS_PATH_RE = re.compile(r"/[A-Za-z0-9/_.~%-]{0,500}")
MAX_FRAME_TEXT = 16384  # characters of one frame kept for the page; the rest is cut with a note
MAX_CLIENT_MESSAGE = 8192  # bytes of one message from the page (commands are tiny)
MAX_CLIENT_QUEUE = 1000  # messages waiting for a slow browser before it is dropped
# Results that are no error: the page shows them, but they do not become the charger's "last error".
_FINE = frozenset({"Accepted", "Unchanged", "Queued", "Scheduled", "RebootRequired", "Unlocked"})
# The MQTT command topics the page has controls for (not charging_schedule, not remove).
PAGE_COMMANDS = frozenset({"charging_limit", "charging", "available", "reset", "unlock", "refresh", "clear_limit"})
_CONFIG_KEY_RE = re.compile(r"[A-Za-z0-9._:-]{1,50}", re.ASCII)  # CiString50; printable ASCII kept narrow on purpose
_SECURITY_HEADERS = {
    # Defence in depth behind escaping every charger-supplied string: no inline script, nothing from elsewhere.
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'self'; form-action 'none'; frame-ancestors 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}


def ingress_prefix(header: str | None) -> str:
    """The ``X-Ingress-Path`` header as a URL prefix without a trailing slash ('' when absent or odd)."""
    if not header or _INGRESS_PATH_RE.fullmatch(header) is None or "//" in header or "/../" in f"{header}/":
        return ""
    return header.rstrip("/")


def frame_summary(direction: str, text: str, pending: dict[str, str]) -> dict[str, Any]:
    """One captured frame for the page: time, direction, message type, action and the text (bounded).

    ``pending`` maps the unique ids of CALLs seen on this connection to their action, so an
    answer is shown with the action it answers (OCPP-J answers carry only the id)."""
    entry: dict[str, Any] = {"t": time.time(), "dir": direction, "type": "?", "action": "", "text": text}
    if len(text) > MAX_FRAME_TEXT:
        entry["text"] = text[:MAX_FRAME_TEXT] + f"... ({len(text)} characters)"
    try:
        msg = strict_loads(text)
    except (ValueError, RecursionError):
        return entry
    if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[1], str):
        return entry
    unique_id = msg[1][:36]
    if msg[0] == 2 and isinstance(msg[2], str):
        entry["type"], entry["action"] = "CALL", msg[2][:64]
        if len(pending) >= 64:  # answers never came: forget the oldest
            pending.pop(next(iter(pending)))
        pending[f"{direction}:{unique_id}"] = entry["action"]
    elif msg[0] in (3, 4):
        entry["type"] = "CALLRESULT" if msg[0] == 3 else "CALLERROR"
        # An answer travels the other way from its CALL.
        entry["action"] = pending.pop(f"{'out' if direction == 'in' else 'in'}:{unique_id}", "")
    return entry


def charger_view(state: ChargerState, hub: Hub, extra: dict[str, Any]) -> dict[str, Any]:
    """Everything the page shows about one charger, as plain JSON (the page escapes every string)."""
    charging = hub.config["charging"]
    values = state_values(state, charging["unit"])  # the entity table's values, as Home Assistant gets them
    requested = state.requested_limit
    applied = values["charging_limit"]  # what the charger accepted, in the slider's unit (limits.shown)
    view: dict[str, Any] = {
        "id": state.id,
        "connected": state.connected,
        "status": values.get("status"),
        "error_code": values.get("error_code"),
        "power": values.get("power"),
        "energy": values.get("energy"),
        "current": values.get("current"),
        "charging": values.get("charging"),
        "available": values.get("available"),
        "requested_limit": requested,
        "requested_unit": state.requested_unit if requested is not None else None,
        "charging_limit": applied,
        "charging_limit_unit": charging["unit"] if applied is not None else None,
        "effective_limit": state.effective_limit,
        "effective_limit_unit": state.effective_limit_unit if state.effective_limit is not None else None,
        "vendor": state.vendor,
        "model": state.model,
        "firmware": state.firmware,
        "serial": state.serial,
        "last_heartbeat": state.last_heartbeat,
        "smart_charging": values.get("smart_charging"),
        "strategy": state.strategy,
        "capabilities": state.capabilities,
        "connectors": {str(cid): {"status": c.status, "error_code": c.error_code, "info": c.info,
                                  "transaction_id": c.transaction_id} for cid, c in sorted(state.connectors.items())},
        "unit": charging["unit"],
    }
    if hub.limit(state.id).unsettled:
        view["limit_reason"] = extra.get("limit_reason") or ("waiting for the charger" if state.connected else "charger offline; sent when it connects")
    elif state.applied is not None and state.applied.reason:
        view["limit_reason"] = state.applied.reason  # e.g. "paused: below 6 A"
    if extra.get("last_error"):
        view["last_error"] = extra["last_error"]
    return view


class _Client:
    """One open page: its WebSocket, the charger whose frames it shows, and a send queue."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.watching: str | None = None
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(MAX_CLIENT_QUEUE)

    def send(self, message: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait(json.dumps(message, allow_nan=False, default=str))
            return True
        except asyncio.QueueFull:
            return False


class WebSink:
    """Hub sink plus the aiohttp server of the chargers page."""

    def __init__(self, config: dict[str, Any], hub: Hub) -> None:
        self.config = config
        self.web_config = config["web"]
        self.hub = hub
        self.clients: set[_Client] = set()
        self.nobody_looks = asyncio.Event()  # no page open (frames are not captured)
        self.nobody_looks.set()
        self.frames: dict[str, deque[dict[str, Any]]] = {}
        self._pending: dict[str, dict[str, str]] = {}  # charger -> unique id -> action, for labelling answers
        self._extra: dict[str, dict[str, Any]] = {}  # charger -> last error, limit reason
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port: int | None = None
        proxy = self.web_config["ingress_proxy"]
        self._ingress_proxy = ipaddress.ip_address(proxy) if self.web_config["ingress"] else None
        password = self.web_config["password"]
        self._password = PagePassword(password) if self._ingress_proxy is None and password else None
        self._index = (STATIC / "index.html").read_text(encoding="utf-8")
        self._refusals_log = LogBudget(lines=10, interval=60.0)

    # -- serving ------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_CLIENT_MESSAGE)
        app.router.add_get("/", self._page)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/static/{name}", self._static)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.application(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.web_config["host"], self.web_config["port"])
        try:
            await site.start()
        except OSError as err:
            # The page is a window onto the chargers, not part of serving them: go on without it.
            _LOGGER.error("chargers page: cannot listen on %s:%d (%s); chargers are served without the page",
                          self.web_config["host"], self.web_config["port"], err.strerror or err)
            await self._runner.cleanup()
            self._runner = None
            return
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.web_config["port"]
        if self.web_config["ingress"]:
            _LOGGER.info("chargers page on port %d for Home Assistant's ingress (only %s may connect)", self.port,
                         self.web_config["ingress_proxy"])
        else:
            _LOGGER.info("chargers page on http://%s:%d/ (password protected)", self.web_config["host"], self.port)

    async def stop(self) -> None:
        self.hub.frame_tap = None
        for client in list(self.clients):
            await client.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        refusal = await self._refusal(request)
        if refusal is not None:
            refusal.headers.update(_SECURITY_HEADERS)  # refusals too: a 401/403 page is a page a browser renders
            return refusal
        try:
            response = await handler(request)
        except web.HTTPException as err:  # 404 and friends
            err.headers.update(_SECURITY_HEADERS)
            raise
        response.headers.update(_SECURITY_HEADERS)
        return response

    async def _refusal(self, request: web.Request) -> web.Response | None:
        if self._ingress_proxy is not None:
            try:
                peer = ipaddress.ip_address(request.remote or "")
            except ValueError:
                peer = None
            if peer != self._ingress_proxy:
                self._log_refusal("refused a request from %s: only Home Assistant's ingress proxy (%s) may connect",
                                  printable(request.remote, 50), self._ingress_proxy)
                return web.Response(status=403, text="Forbidden: open this page from Home Assistant's sidebar\n")
            return None
        assert self._password is not None  # config.validate: standalone needs web.password
        if not await self._password.check(request.headers.get("Authorization"), request.remote or "?"):
            return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="ocpp chargers", charset="UTF-8"'})
        return None

    def _log_refusal(self, message: str, *args: Any) -> None:
        """Whoever can reach the port can send refused requests as fast as they like: at most 10 lines a minute."""
        log_now, held = self._refusals_log.take()
        if log_now:
            _LOGGER.warning("chargers page: " + message + (f" ({held} more refused since the last line)" if held else ""), *args)

    async def _page(self, request: web.Request) -> web.Response:
        base = ingress_prefix(request.headers.get("X-Ingress-Path")) if self._ingress_proxy is not None else ""
        # Every URL on the page is relative to <base href>, so it works under the ingress prefix.
        body = self._index.replace("{{BASE}}", html.escape(f"{base}/", quote=True)).replace("{{VERSION}}", html.escape(__version__))
        return web.Response(text=body, content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        path = STATIC / name
        if not re.fullmatch(r"[a-z0-9_-]+\.(js|css|svg|png)", name) or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=_CONTENT_TYPES[path.suffix])

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self._ingress_proxy is None and not _same_origin(request):
            self._log_refusal("refused a WebSocket from another site (Origin %s)", printable(request.headers.get("Origin"), 100))
            return web.Response(status=403, text="Forbidden: cross-site WebSocket\n")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_CLIENT_MESSAGE)
        await ws.prepare(request)
        client = _Client(ws)
        self.clients.add(client)
        self.nobody_looks.clear()
        self.hub.frame_tap = self._on_frame  # somebody looks: capture frames from now on
        sender = asyncio.create_task(self._send_loop(client), name="web-send")
        try:
            client.send({"type": "hello", "version": __version__, "chargers": self._all_views()})
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    request_data = strict_loads(message.data)
                except (ValueError, RecursionError):
                    client.send({"type": "error", "reason": "not JSON"})
                    continue
                if isinstance(request_data, dict):
                    self._on_request(client, request_data)
        finally:
            self.clients.discard(client)
            if not self.clients:
                self.hub.frame_tap = None  # nobody looks: frames cost nothing again
                self.nobody_looks.set()
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        return ws

    async def _send_loop(self, client: _Client) -> None:
        while True:
            message = await client.queue.get()
            if message is None or client.ws.closed:
                return
            await client.ws.send_str(message)

    # -- from the hub -------------------------------------------------------------

    def handle(self, event: Event) -> None:
        kind, cid = event.kind, event.charger_id
        if kind == RESULT:
            self._on_result(cid, event.data)
            return
        if kind == REMOVED:
            self.frames.pop(cid, None)
            self._pending.pop(cid, None)
            self._extra.pop(cid, None)
            self._broadcast({"type": "removed", "id": cid})
            return
        if not self.clients:
            return  # nobody looks: a snapshot is built when a page opens
        if kind in (UPDATED, CONNECTED, DISCONNECTED, IDENTIFIED, READY):
            self._dirty.add(cid)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _on_result(self, cid: str, data: dict[str, Any]) -> None:
        if cid not in self.hub.states:
            return  # e.g. an MQTT command for an id that never connected: no page shows it, keep nothing
        status = str(data.get("status"))
        extra = self._extra.setdefault(cid, {})
        if status not in _FINE:
            reason = data.get("reason") or ""
            extra["last_error"] = {"time": time.time(), "command": str(data.get("command") or ""), "status": status, "reason": str(reason)}
        if data.get("command") == "charging_limit":
            extra["limit_reason"] = f"{status}: {data['reason']}" if data.get("reason") else status
        if self.clients:
            self._broadcast({"type": "result", "id": cid, "result": data})
            self._dirty.add(cid)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for cid in dirty:
            state = self.hub.states.get(cid)
            if state is not None:
                self._broadcast({"type": "charger", "charger": charger_view(state, self.hub, self._extra.get(cid, {}))})

    def _on_frame(self, charger_id: str, direction: str, text: str) -> None:
        """The hub's frame tap (set only while a page is open): keep the frame and stream it."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        entry = frame_summary(direction, text, self._pending.setdefault(charger_id, {}))
        buffer = self.frames.get(charger_id)
        if buffer is None:
            buffer = self.frames[charger_id] = deque(maxlen=self.web_config["frames_per_charger"])
        buffer.append(entry)
        for client in self.clients:
            if client.watching == charger_id:
                client.send({"type": "frame", "id": charger_id, "frame": entry})

    def _broadcast(self, message: dict[str, Any]) -> None:
        for client in list(self.clients):
            if not client.send(message):
                _LOGGER.warning("chargers page: a browser fell %d messages behind; closing its connection", MAX_CLIENT_QUEUE)
                self.clients.discard(client)
                self._spawn(client.ws.close())

    def _all_views(self) -> list[dict[str, Any]]:
        return [charger_view(state, self.hub, self._extra.get(cid, {})) for cid, state in sorted(self.hub.states.items())]

    # -- from the page ------------------------------------------------------------

    def _on_request(self, client: _Client, data: dict[str, Any]) -> None:
        kind = data.get("type")
        cid = data.get("id")
        if not is_charger_id(cid) or cid not in self.hub.states:
            client.send({"type": "error", "reason": "unknown charger"})
            return
        if kind == "watch":
            client.watching = cid
            client.send({"type": "frames", "id": cid, "frames": list(self.frames.get(cid, ()))})
        elif kind == "command":
            self._command(client, cid, str(data.get("command")), data.get("payload"))
        elif kind == "get_configuration":
            self._spawn(self._get_configuration(client, cid))
        elif kind == "change_configuration":
            key, value = data.get("key"), data.get("value")
            v201 = getattr(self.hub.connected.get(cid), "ocpp_version", None) == "2.0.1"
            pattern, rule = (ocpp201.KEY_RE, "a device-model key (up to 160 of A-Z a-z 0-9 * - _ = : + | @ . [ ] /)") if v201 else \
                (_CONFIG_KEY_RE, "a key (up to 50 letters, digits, . _ : -)")
            if not isinstance(key, str) or pattern.fullmatch(key) is None or not isinstance(value, str) or len(value) > 500:
                client.send({"type": "result", "id": cid, "result": {"command": "change_configuration", "status": "Invalid",
                                                                     "reason": f"{rule} and a value of up to 500 characters"}})
                return
            self._spawn(self.hub.command(cid, "change_configuration", key=key, value=value))
        else:
            client.send({"type": "error", "reason": "unknown request"})

    def _command(self, client: _Client, cid: str, command: str, payload: Any) -> None:
        """The page's controls: the MQTT command topics' own functions (same parsing, same checks,
        same hub calls), fed the payload the page's button or field would publish there."""
        handler = COMMANDS.get(command) if command in PAGE_COMMANDS else None
        if handler is None:
            self.hub.result(cid, command=printable(command, 40), status="UnknownCommand", reason="no such command on this page")
            return
        raw = (payload if isinstance(payload, str) else json.dumps(payload)).encode("utf-8")
        try:
            handler(self.hub, self.config, cid, raw, "web")
        except SetpointError as err:
            _LOGGER.warning("%s: %s from the chargers page refused: %s", cid, command, err)
            self.hub.result(cid, command=command, status="Invalid", reason=str(err))

    async def _get_configuration(self, client: _Client, cid: str) -> None:
        """GetConfiguration for the page that asked, and only for it.

        A read, not a command: its answer is every key the charger keeps, which may include
        credentials (a backend URL with a password, a Wi-Fi key), so it does not go through
        ``hub.command`` and out as a RESULT to MQTT's event topic and every open page."""
        cp = self.hub.connected.get(cid)
        if cp is None:
            client.send({"type": "configuration", "id": cid, "status": "Offline", "reason": "charger not connected", "keys": [], "unknown": []})
            return
        result = await cp.execute_get_configuration()
        response = result.get("response", {})
        keys = []
        for item in response.get("configurationKey") or []:
            if isinstance(item, dict) and isinstance(item.get("key"), str):
                keys.append({"key": item["key"], "readonly": bool(item.get("readonly")), "value": item.get("value")})
        client.send({"type": "configuration", "id": cid, "status": result["status"], "reason": result.get("reason"),
                     "keys": keys, "unknown": response.get("unknownKey") or []})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _same_origin(request: web.Request) -> bool:
    """A browser's WebSocket carries its page's Origin: it must be this server (Host)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: no ambient credentials to abuse
    match = re.fullmatch(r"https?://([^/]+)", origin)
    return match is not None and match.group(1).lower() == (request.host or "").lower()
