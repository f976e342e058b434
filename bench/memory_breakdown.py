"""Where does the memory per connected charger go? tracemalloc over N idle chargers.

Runs the service in this process (``ocpp_addon.app.App``, so tracemalloc sees its Python
allocations; the chargers run in worker processes as usual), takes a snapshot before any
charger and one after N chargers connected, booted and idled for --settle s, and prints the
allocation sites that grew, per charger, grouped by source line and by file.
tracemalloc only sees Python-level allocations: RSS per charger (throughput.py) is higher
(kernel socket buffers are not in RSS at all; allocator overhead and fragmentation are).

Example:
    python bench/memory_breakdown.py --chargers 500
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Fleet, FleetSpec, free_port, git_revision, machine_description, raise_nofile, start_broker, workdir  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chargers", "-n", type=int, default=500, help="idle chargers to connect (default 500, max 5000)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds idle after the fleet booted (default 5)")
    p.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    p.add_argument("--frames", type=int, default=1, help="traceback depth kept by tracemalloc (default 1)")
    args = p.parse_args(argv)
    args.chargers = max(1, min(args.chargers, 5000))
    return args


async def main_async(args: argparse.Namespace) -> int:
    import logging

    from ocpp_addon import config as config_module
    from ocpp_addon.app import App

    raise_nofile(args.chargers + 1000)
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {machine_description()}")
    print(f"code: {git_revision()}")
    wd = workdir("memory")
    broker = await start_broker(wd)
    raw = {
        "log_level": "warning", "data_dir": str(wd / "data"),
        "ocpp": {"host": "127.0.0.1", "port": free_port()},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "embedded_broker": False, "client_id": f"bench-mem-{free_port()}"},
    }
    try:
        config_module.validate({"ocpp": {"max_connections": 100000}})
        raw["ocpp"]["max_connections"] = 100000
    except Exception:  # noqa: BLE001 - an older service without the option
        pass
    tracemalloc.start(args.frames)
    app = App(config_module.validate(raw))
    fleet = None
    try:
        await app.start()
        await asyncio.wait_for(app.mqtt.connected.wait(), 20)
        await asyncio.sleep(1.0)
        gc.collect()
        before = tracemalloc.take_snapshot()
        fleet = Fleet(FleetSpec(url=f"ws://127.0.0.1:{raw['ocpp']['port']}", count=args.chargers, interval=3600, duration=1))
        t0 = time.monotonic()
        fleet.start()
        ready = await asyncio.to_thread(fleet.wait_ready, 300)
        await asyncio.sleep(args.settle)
        gc.collect()
        after = tracemalloc.take_snapshot()
        n = ready["connected"]
        print(f"{n} chargers connected and booted in {time.monotonic() - t0:.1f} s; settled {args.settle:g} s")
        filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
        before, after = before.filter_traces(filters), after.filter_traces(filters)
        for key in ("lineno", "filename"):
            diff = after.compare_to(before, key)
            total = sum(d.size_diff for d in diff)
            print(f"\n=== growth by {key}: {total / 1024:.0f} KiB in all = {total / n / 1024:.2f} KiB per charger ===")
            for d in diff[: args.top]:
                frame = d.traceback[0]
                where = "/".join(Path(frame.filename).parts[-2:]) + (f":{frame.lineno}" if key == "lineno" else "")
                print(f"  {d.size_diff / n:8.0f} B/charger  {d.count_diff / n:6.1f} blocks/charger  {where}")
    finally:
        if fleet is not None:
            await asyncio.to_thread(fleet.release)
        await app.stop()
        await broker.stop()
        tracemalloc.stop()
        shutil.rmtree(wd, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
