"""Setpoint latency: MQTT ``<base>/<id>/charging_limit/set`` -> SetChargingProfile at the charger.

Starts mosquitto and the service (subprocess), connects one probe charger (raw websockets,
answers SetChargingProfile with Accepted at once), then publishes --count setpoints one at a
time with a paho client, alternating two values so none is deduplicated. For each it waits
for the SetChargingProfile frame at the probe (that is the latency) and for the service's
result on ``<base>/<id>/event`` (the whole loop back to MQTT) before sending the next.

Note: the service debounces setpoints (``charging.debounce``, default 0.3 s) so a slider drag
becomes one profile write. This script sets ``--debounce 0`` by default to measure the pipeline
itself (and to finish 500 setpoints in well under 2 minutes); ``--debounce default`` keeps the
service's own value (then every figure is ~300 ms higher and 500 setpoints take ~2.5 minutes).

``--load N`` runs the same while N other chargers send MeterValues (9 sampled values) every
``--load-interval`` s (default 1) from worker processes.

Examples:
    python bench/latency.py                       # 500 setpoints, idle, debounce 0
    python bench/latency.py --debounce default    # with the service's default debounce (0.3 s)
    python bench/latency.py --load 1000           # while 1000 chargers send MeterValues every second
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    FakeCharger,
    Fleet,
    FleetSpec,
    FleetStats,
    MqttWatch,
    fmt_ms,
    git_revision,
    machine_description,
    pct_summary,
    raise_nofile,
    start_broker,
    start_service,
    system_cpu,
    wait_bridge_online,
    wait_for_quiet,
    workdir,
)

PROBE_ID = "latency-probe"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=500, help="measured setpoints (default 500, max 20000)")
    p.add_argument("--warmup", type=int, default=10, help="setpoints sent first and not counted (default 10)")
    p.add_argument("--values", default="10,16", help="two setpoint values to alternate, in the slider unit (default 10,16)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=0, help="MQTT QoS of the setpoint publish (default 0, like HA's number)")
    p.add_argument("--debounce", default="0",
                   help="charging.debounce for the service in seconds, or 'default' for the service's own (default 0)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each arrival (default 10)")
    p.add_argument("--load", type=int, default=0, help="other chargers sending MeterValues meanwhile (default 0)")
    p.add_argument("--ocpp", choices=("1.6", "2.0.1"), default="1.6", help="the probe's (and the load's) protocol (default 1.6)")
    p.add_argument("--load-interval", type=float, default=1.0, help="seconds between their MeterValues (default 1)")
    p.add_argument("--workers", type=int, default=0, help="generator processes for --load (default: auto)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="service log level (default info)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop measuring after this many seconds (default 600)")
    p.add_argument("--patch", action="append", default=[], metavar="NAME",
                   help="what-if: apply bench/patches/sitecustomize.py patch NAME to the service (e.g. nodelay); repeatable")
    p.add_argument("--broker-nodelay", action="store_true", help="what-if: mosquitto with set_tcp_nodelay true")
    p.add_argument("--wait-quiet", type=float, default=60.0,
                   help="wait up to this many seconds for the machine to be idle first (default 60; 0: don't)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args(argv)
    args.count = max(1, min(args.count, 20000))
    try:
        a, b = (float(v) for v in args.values.split(","))
    except ValueError:
        p.error("--values takes two numbers, e.g. 10,16")
    args.pair = (a, b)
    if args.debounce == "default":
        args.debounce = None
    else:
        try:
            args.debounce = float(args.debounce)
        except ValueError:
            p.error("--debounce takes seconds or 'default'")
    return args


async def main_async(args: argparse.Namespace) -> int:
    raise_nofile(args.load + 2000)
    wd = workdir("latency")
    loop = asyncio.get_running_loop()
    print(f"machine: {machine_description()}")
    print(f"code: {git_revision()}" + (f"; what-if patches: {','.join(args.patch)}" if args.patch else "")
          + ("; mosquitto set_tcp_nodelay" if args.broker_nodelay else ""))
    busy_before = await asyncio.to_thread(wait_for_quiet, args.wait_quiet) if args.wait_quiet > 0 else None
    broker = await start_broker(wd, nodelay=args.broker_nodelay)
    extra = {"charging": {"debounce": args.debounce}} if args.debounce is not None else None
    fleet: Fleet | None = None
    service = None
    mqtt = None
    probe = None
    out: dict[str, Any] = {"count": args.count, "load": args.load, "debounce": args.debounce, "qos": args.qos}
    try:
        service, port = await asyncio.to_thread(start_service, wd, broker.port, args.log_level, None, extra, args.patch)
        out["startup_s"] = service.startup_seconds
        await asyncio.to_thread(wait_bridge_online, broker.port)
        url = f"ws://127.0.0.1:{port}"

        if args.load > 0:
            fleet = Fleet(FleetSpec(url=url, count=args.load, interval=args.load_interval, duration=args.max_seconds + 60,
                                    workers=args.workers, prefix="load", ocpp=args.ocpp))
            fleet.start()
            ready = await asyncio.to_thread(fleet.wait_ready, 300)
            out["load_connected"] = ready["connected"]
            print(f"load: {ready['connected']} chargers connected in {ready['ramp_seconds']:.1f} s; MeterValues every {args.load_interval:g} s")
            fleet.go(0.2)
            await asyncio.sleep(2.0)  # let the load reach its steady rate

        arrivals: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        results: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        stats = FleetStats()
        probe = FakeCharger(PROBE_ID, url, stats, timeout=args.timeout, ocpp=args.ocpp,
                            on_profile=lambda t, payload: arrivals.put_nowait((t, payload)))
        await probe.connect()
        if not await probe.boot():
            raise RuntimeError(f"probe charger did not boot: {stats.error_samples}")

        def on_mqtt(topic: str, payload: bytes) -> None:
            t = time.monotonic()
            loop.call_soon_threadsafe(results.put_nowait, (t, payload))

        mqtt = MqttWatch(broker.port, [f"ocpp/{PROBE_ID}/event"], on_mqtt, qos=1)
        await asyncio.to_thread(mqtt.wait_subscribed)
        topic = f"ocpp/{PROBE_ID}/charging_limit/set"

        to_frame: list[float] = []
        to_result: list[float] = []
        timeouts = 0
        other_status: dict[str, int] = {}
        deadline = time.monotonic() + args.max_seconds
        cpu0, wall0 = service.cpu_seconds(), time.monotonic()
        sys0 = system_cpu()
        for i in range(args.warmup + args.count):
            if time.monotonic() > deadline:
                print(f"stopped after --max-seconds {args.max_seconds:g}")
                break
            value = args.pair[i % 2]
            while not arrivals.empty():
                arrivals.get_nowait()
            t0 = time.monotonic()
            mqtt.publish(topic, f"{value:g}", qos=args.qos)
            try:
                t1, payload = await asyncio.wait_for(arrivals.get(), args.timeout)
            except asyncio.TimeoutError:
                timeouts += 1
                continue
            # the result for this setpoint (skip results of earlier ones, e.g. Unchanged/late)
            t2 = None
            while True:
                try:
                    t, raw = await asyncio.wait_for(results.get(), args.timeout)
                except asyncio.TimeoutError:
                    break
                try:
                    data = json.loads(raw)
                except ValueError:
                    continue
                if data.get("command") == "charging_limit" and data.get("limit") == value:
                    t2 = t
                    status = str(data.get("status"))
                    if status != "Accepted":
                        other_status[status] = other_status.get(status, 0) + 1
                    break
            if i < args.warmup:
                continue
            to_frame.append((t1 - t0) * 1000)
            if t2 is not None:
                to_result.append((t2 - t0) * 1000)
            else:
                timeouts += 1
        wall = time.monotonic() - wall0
        cpu = service.cpu_seconds() - cpu0
        out["machine_busy_pct"] = 100 * (system_cpu()[0] - sys0[0]) / wall
        out["setpoint_to_frame_ms"] = pct_summary(to_frame)
        out["setpoint_to_result_ms"] = pct_summary(to_result)
        out["timeouts"] = timeouts
        out["non_accepted_results"] = other_status
        out["service_cpu_pct"] = 100 * cpu / wall
        out["wall_s"] = wall

        load_stats = None
        if fleet is not None:
            fleet.stop()
            load_stats = await asyncio.to_thread(fleet.results, 120)
            out["load_msgs_per_s"] = load_stats.ok / max(load_stats.window, 1e-9)
            out["load_rtt_ms"] = pct_summary(load_stats.rtt_ms)
            out["load_errors"] = load_stats.call_errors + load_stats.timeouts + load_stats.send_failed + load_stats.disconnects
            out["load_late_ticks"] = load_stats.late_ticks

        deb = "service default" if args.debounce is None else f"{args.debounce:g} s"
        print(f"\n=== setpoint latency: {len(to_frame)} setpoints, sequential, QoS {args.qos}, debounce {deb}, "
              f"load {args.load} chargers{'' if not args.load else f' x MeterValues/{args.load_interval:g} s'} ===")
        print(f"start-up to ready line        {out['startup_s']:.2f} s")
        print(f"MQTT set -> SetChargingProfile at charger   {fmt_ms(out['setpoint_to_frame_ms'])}")
        print(f"MQTT set -> result on <base>/<id>/event     {fmt_ms(out['setpoint_to_result_ms'])}")
        print(f"timeouts {timeouts}; results other than Accepted: {other_status or 'none'}")
        print(f"service CPU during the run    {out['service_cpu_pct']:.1f}% of one core over {wall:.1f} s")
        if load_stats is not None:
            print(f"load: {out['load_msgs_per_s']:.0f} MeterValues/s answered, round trip {fmt_ms(out['load_rtt_ms'])}, "
                  f"errors {out['load_errors']}, late ticks {out['load_late_ticks']}")
        print(f"service log: {service.warnings} warnings, {service.errors} errors")
        print(f"machine: {out['machine_busy_pct']:.0f}% of one core busy during the run (all processes, all cores)"
              + (f", {busy_before:.0f}% before it" if busy_before is not None else ""))
        if args.json:
            print(json.dumps(out, default=str))
    finally:
        if mqtt is not None:
            mqtt.close()
        if probe is not None:
            await probe.close()
        if fleet is not None:
            await asyncio.to_thread(fleet.release)
        if service is not None:
            await asyncio.to_thread(service.stop)
        await broker.stop()
        if not args.keep:
            shutil.rmtree(wd, ignore_errors=True)
        else:
            print(f"workdir kept: {wd}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
