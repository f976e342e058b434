"""One charger floods, another one measures: does the flood cost everybody else?

A "victim" charger does Heartbeat round trips (10/s, under its own limit) for --seconds, first with the
service quiet, then while a "flooder" sends pipelined Heartbeats as fast as it can
(never waiting for answers). Printed: the victim's round trip p50/p99/max in both phases,
how many flood frames were answered, when (if) the flooder was disconnected, and the
service's CPU. Run with the defaults (ocpp.max_message_rate 20/s) and with --no-limit to
see what the per-charger rate limit buys.

    .venv/bin/python bench/flood.py [--seconds 10] [--no-limit]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import fmt_ms, git_revision, machine_description, pct_summary, start_broker, start_service, workdir  # noqa: E402


async def round_trips(ws: websockets.ClientConnection, seconds: float, rate: float) -> list[float]:
    """Heartbeat round trips paced at ``rate``/s: the victim stays under its own per-charger limit."""
    rtts: list[float] = []
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        n += 1
        t0 = time.perf_counter()
        await ws.send(json.dumps([2, f"v-{n}", "Heartbeat", {}]))
        while json.loads(await ws.recv())[1] != f"v-{n}":
            pass
        rtts.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))  # pacing, not synchronisation
    return rtts


def _flood_entry(url: str, seconds: float, results: Any) -> None:
    results.put(asyncio.run(_flood(url, seconds)))


async def _flood(url: str, seconds: float) -> tuple[int, int, float | None, int | None]:
    """Pipelined Heartbeats as fast as possible for ``seconds``; answers are read (and counted) meanwhile."""
    flooder = await websockets.connect(url, subprotocols=["ocpp1.6"], max_queue=None, close_timeout=1)
    sent = answered = 0
    closed_at: float | None = None
    t0 = time.monotonic()

    async def drain() -> None:
        nonlocal answered, closed_at
        try:
            while True:
                await flooder.recv()
                answered += 1
        except websockets.ConnectionClosed:
            closed_at = time.monotonic() - t0

    reader = asyncio.create_task(drain())
    try:
        while (left := seconds - (time.monotonic() - t0)) > 0:
            # A rate-limited service stops reading: the send then waits on TCP backpressure, up to the end.
            await asyncio.wait_for(flooder.send(json.dumps([2, f"f-{sent}", "Heartbeat", {}])), left)
            sent += 1
    except (websockets.ConnectionClosed, TimeoutError):
        pass
    await asyncio.sleep(0.5)  # answers still on the way
    reader.cancel()
    code = flooder.close_code
    await flooder.close()
    return sent, answered, closed_at, code


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--no-limit", action="store_true", help="ocpp.max_message_rate 100000 (no per-charger limit)")
    parser.add_argument("--victim-rate", type=float, default=10.0,
                        help="the victim's round trips per second (default 10: under the default limit of 20/s)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = workdir("flood")
    broker = await start_broker(work)
    extra = {"ocpp": {"max_message_rate": 100000, "message_burst": 100000}} if args.no_limit else None
    service, port = start_service(work, broker.port, extra=extra)
    url = f"ws://127.0.0.1:{port}"
    try:
        victim = await websockets.connect(f"{url}/victim", subprotocols=["ocpp1.6"])
        quiet = await round_trips(victim, args.seconds, args.victim_rate)
        results: multiprocessing.Queue[tuple[int, int, float | None, int | None]] = multiprocessing.Queue()
        # The flooder runs in its own process: in ours its send loop would starve the victim's measurements.
        flood_process = multiprocessing.Process(target=_flood_entry, args=(f"{url}/flooder", args.seconds, results))
        cpu0 = service.cpu_seconds()
        flood_process.start()
        loud = await round_trips(victim, args.seconds, args.victim_rate)
        cpu = service.cpu_seconds() - cpu0
        sent, answered, closed_at, close_code = await asyncio.to_thread(results.get, True, args.seconds + 30)
        flood_process.join(10)
        print(f"machine: {machine_description()}; code: {git_revision()}")
        print(f"limit: {'none (max_message_rate 100000)' if args.no_limit else 'defaults (max_message_rate 20/s, burst 200, disconnect after 30 s of backlog)'}")
        print(f"victim round trip, quiet:        {fmt_ms(pct_summary(quiet))}")
        print(f"victim round trip, under flood:  {fmt_ms(pct_summary(loud))}")
        print(f"flooder: {sent} frames sent in {args.seconds:g} s ({sent / args.seconds:,.0f}/s), {answered} answered, "
              + (f"disconnected after {closed_at:.1f} s (close code {close_code})" if closed_at is not None else "still connected"))
        print(f"service CPU during the flood: {cpu / args.seconds * 100:.0f}% of a core")
        await victim.close()
    finally:
        service.stop()
        await broker.stop()
        if not args.keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
