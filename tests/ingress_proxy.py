"""A stand-in for the Supervisor's ingress proxy, for the chargers page tests.

Like the real one it serves the app under ``/api/hassio_ingress/<token>/``, strips that prefix,
adds ``X-Ingress-Path`` and forwards HTTP requests and WebSockets to the app's ingress port. It
connects from 127.0.0.1, which the tests configure as ``web.ingress_proxy``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

INGRESS_PATH = "/api/hassio_ingress/t0k3n-Ab_9"
_HOP_HEADERS = {"host", "connection", "upgrade", "transfer-encoding", "content-length", "keep-alive",
                "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-accept"}


class IngressProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = f"http://127.0.0.1:{upstream_port}"
        # Bound now and handed to the server as it is: a port picked, closed and bound again later can be
        # taken in between by any outgoing connection of the suite (it failed once that way).
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(100)
        self.port: int = self._socket.getsockname()[1]
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{INGRESS_PATH}/"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.1", 0)))
        app = web.Application()
        app.router.add_route("GET", INGRESS_PATH + "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["X-Ingress-Path"] = INGRESS_PATH
        return headers

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        target = f"{self.upstream}/{request.match_info['tail']}"
        if request.query_string:
            target += f"?{request.query_string}"
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._forward_websocket(request, target)
        async with self._session.get(target, headers=self._headers(request), allow_redirects=False) as upstream:
            body = await upstream.read()
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS | {"content-encoding"}}
            return web.Response(status=upstream.status, body=body, headers=headers)

    async def _forward_websocket(self, request: web.Request, target: str) -> web.StreamResponse:
        assert self._session is not None
        headers = self._headers(request)
        headers.pop("Origin", None)
        async with self._session.ws_connect(target.replace("http://", "ws://"), headers=headers) as upstream:
            browser = web.WebSocketResponse()
            await browser.prepare(request)

            async def pump(source: Any, sink: Any) -> None:
                async for message in source:
                    if message.type == WSMsgType.TEXT:
                        await sink.send_str(message.data)
                    elif message.type == WSMsgType.BINARY:
                        await sink.send_bytes(message.data)
                    else:
                        break

            tasks = [asyncio.ensure_future(pump(browser, upstream)), asyncio.ensure_future(pump(upstream, browser))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await browser.close()
        return browser
