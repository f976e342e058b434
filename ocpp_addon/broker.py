"""An embedded MQTT broker for the standalone quick start (and the tests).

When no broker is configured and none answers on localhost, the service starts
Debian's ``mosquitto`` bound to 127.0.0.1 only, so a first run needs nothing
else. Anything beyond a quick start should point ``mqtt.host`` at a real broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
from pathlib import Path

_LOGGER = logging.getLogger(__name__)
CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


class BrokerError(RuntimeError):
    pass


class EmbeddedBroker:
    def __init__(self, port: int, data_dir: str | Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.dir = Path(data_dir) / "mosquitto"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 10.0) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError(
                f"no MQTT broker answers on {self.host}:{self.port} and mosquitto is not installed; "
                "install it (apt-get install mosquitto) or set mqtt.host to your broker"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to its own user: let that user keep its persistence file.
            try:
                shutil.chown(self.dir, user="mosquitto")
            except (LookupError, OSError):
                pass
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            # set_tcp_nodelay: small publishes (state, then the command result) must not wait ~40 ms on Nagle
            f"listener {self.port} {self.host}\nallow_anonymous true\npersistence true\nset_tcp_nodelay true\n"
            f"persistence_location {self.dir}/\nlog_dest file {self.dir}/mosquitto.log\n",
            encoding="utf-8",
        )
        self.process = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self._answers):
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise BrokerError(f"embedded mosquitto did not come up on {self.host}:{self.port}; see {self.dir}/mosquitto.log")
            await asyncio.sleep(0.05)
        _LOGGER.info("started embedded mosquitto on %s:%d (pid %d)", self.host, self.port, self.process.pid)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()
