"""Start-up time: spawn ``python -m ocpp_addon`` -> its "ready:" log line, repeated.

Two cases:
* external broker (default): mosquitto is already running, the service connects to it;
* ``--embedded``: no broker answers, so the service starts its own mosquitto first (the
  standalone quick start).

Also prints the time until the service's retained ``<base>/bridge/state`` = online reaches a
subscriber (its MQTT subscriptions are live then) and the RSS right after start-up.

Examples:
    python bench/startup.py                 # 5 starts against a running mosquitto
    python bench/startup.py --embedded      # 5 starts that launch their own mosquitto
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ServiceProcess,
    free_port,
    git_revision,
    machine_description,
    service_command,
    start_broker,
    wait_bridge_online,
    wait_for_quiet,
    workdir,
    write_service_config,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5, help="number of starts (default 5, max 50)")
    p.add_argument("--embedded", action="store_true", help="let the service start its own mosquitto")
    p.add_argument("--wait-quiet", type=float, default=30.0, help="wait up to this long for an idle machine first (default 30; 0: don't)")
    args = p.parse_args(argv)
    args.repeat = max(1, min(args.repeat, 50))
    return args


async def main_async(args: argparse.Namespace) -> int:
    print(f"machine: {machine_description()}")
    print(f"code: {git_revision()}")
    if args.wait_quiet > 0:
        busy = await asyncio.to_thread(wait_for_quiet, args.wait_quiet)
        print(f"machine busy before: {busy:.0f}% of one core")
    wd = workdir("startup")
    broker = None if args.embedded else await start_broker(wd)
    ready: list[float] = []
    online: list[float] = []
    rss: list[int] = []
    try:
        for i in range(args.repeat):
            run_dir = wd / f"run{i}"
            run_dir.mkdir()
            port = broker.port if broker else free_port()
            extra = {"mqtt": {"embedded_broker": True, "host": "127.0.0.1"}} if args.embedded else None
            config = write_service_config(run_dir, port, free_port(), "info", extra)
            service = ServiceProcess(service_command(config), run_dir / "service.log")
            try:
                t0 = time.monotonic()
                ready.append(await asyncio.to_thread(service.start))
                await asyncio.to_thread(wait_bridge_online, port)
                online.append(time.monotonic() - t0)
                rss.append(service.status()["VmRSS"])
            finally:
                await asyncio.to_thread(service.stop)
    finally:
        if broker is not None:
            await broker.stop()
        shutil.rmtree(wd, ignore_errors=True)
    mode = "service starts its own mosquitto" if args.embedded else "mosquitto already running"
    print(f"\n=== start-up, {args.repeat} runs, {mode} ===")
    print(f"spawn -> 'ready:' log line        min {min(ready):.3f}  median {statistics.median(ready):.3f}  max {max(ready):.3f} s")
    print(f"spawn -> bridge/state online seen  min {min(online):.3f}  median {statistics.median(online):.3f}  max {max(online):.3f} s")
    print(f"RSS after start-up                 median {statistics.median(rss) / 1024:.1f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
