"""Throughput: N chargers send MeterValues every --interval s for --duration s; what does it cost?

Starts mosquitto and the service (``python -m ocpp_addon`` as a subprocess, so its CPU time
and RSS are its own), connects a fleet of raw-websocket chargers in worker processes
(BootNotification + StatusNotification each), then measures a window of MeterValues
(9 sampled values each) and prints:

* OCPP messages/s answered, offered rate, round trip at the charger side (p50/p90/p99/max),
  errors (CALLERROR, timeout, closed, disconnects) and late ticks (sends that started more
  than half an interval late: the service or the generator fell behind);
* MQTT messages/s out, counted by a paho subscriber on ``<base>/+/state``;
* service CPU (process CPU seconds / wall seconds, all threads) and CPU per message;
* RSS before any charger, with the fleet connected and idle, under load; RSS per charger;
* mosquitto CPU, generator CPU (so you can see whether the generator was the bottleneck).

``--compare-baseline`` runs the same fleet against bench/baseline.py (bare ocpp library, no MQTT)
and prints the ratios; ``--target baseline`` runs only that. ``--interval 0`` sends back to back
(closed loop) to find saturation. ``--profile pyspy`` samples the service with py-spy during the
window (``pip install py-spy``); ``--profile cprofile`` runs it under cProfile (slower, whole run).
``--web`` turns the chargers page on as the add-on serves it, with no browser connected: runs with
and without it, interleaved, show what the page costs while nobody has it open.

Examples:
    python bench/throughput.py                              # 100 chargers, 1 s, 20 s
    python bench/throughput.py --chargers 1000 --compare-baseline
    python bench/throughput.py --chargers 5000 --interval 10 --duration 30   # memory per idle charger
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Fleet,
    FleetSpec,
    MqttWatch,
    fmt_ms,
    git_revision,
    pin_process,
    machine_description,
    pct_summary,
    proc_cpu_seconds,
    proc_fds,
    raise_nofile,
    start_baseline,
    start_broker,
    start_pyspy,
    start_service,
    summarize_cprofile,
    system_cpu,
    wait_for_quiet,
    summarize_pyspy_raw,
    wait_bridge_online,
    workdir,
)


# --web: the page as the add-on serves it, with no browser connected (what "costs nothing" is about).
WEB_ON = {"enabled": True, "ingress": True, "ingress_proxy": "127.0.0.1", "host": "127.0.0.1", "port": 0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chargers", "-n", type=int, default=100, help="number of chargers (default 100)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between MeterValues per charger; 0 = back to back (default 1)")
    p.add_argument("--duration", type=float, default=20.0, help="measured window in seconds (default 20, max 600)")
    p.add_argument("--workers", type=int, default=0, help="generator processes (default: 1 up to 200 chargers, else 2)")
    p.add_argument("--concurrency", type=int, default=50, help="handshakes in flight per worker (default 50)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds idle after the fleet booted, before the window (default 2)")
    p.add_argument("--target", choices=TARGETS, default="service",
                   help="what to load (default service; baseline = library-default)")
    p.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="the event loop of the service and of every yardstick (OCPP_ADDON_EVENT_LOOP; auto: uvloop "
                        "when installed), so the side-by-side figures are on the same loop")
    p.add_argument("--yardsticks", action="store_true",
                   help="after the service, run the same fleet against every yardstick (library default, inline, off, "
                        "transport floor) and print them side by side")
    p.add_argument("--pin", action="store_true",
                   help="the service (or yardstick) on CPU 0, the generator on CPU 1: neither competes with the other for a "
                        "core, so a target that saturates the machine is not charged for the contention (needs 2+ CPUs)")
    p.add_argument("--floor-only", action="store_true", help="with --yardsticks: only the transport floor beside the service (quicker)")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --yardsticks: run the targets this many times, interleaved (service, floor, service, ...); "
                        "each row is compared with the floor of its own round (default 1)")
    p.add_argument("--compare-baseline", action="store_true", help="also run the same fleet against bench/baseline.py and print ratios")
    p.add_argument("--profile", choices=("none", "pyspy", "cprofile", "cprofile-window"), default="none",
                   help="profile the service: pyspy (sampling, window only), cprofile (whole run, wall time), "
                        "cprofile-window (window only, main-thread CPU time: robust on a shared machine) (default none)")
    p.add_argument("--top", type=int, default=15, help="profile rows to print (default 15)")
    p.add_argument("--profile-idle", action="store_true", help="py-spy: also sample threads that wait (find stalls, not CPU)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="service log level (default info)")
    p.add_argument("--deflate", action="store_true", help="chargers offer permessage-deflate (most real ones do not)")
    p.add_argument("--ocpp", choices=("1.6", "2.0.1"), default="1.6",
                   help="the fleet's protocol: 2.0.1 stations report in TransactionEvent(Updated) (default 1.6)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds allowed for connecting the fleet (default 300)")
    p.add_argument("--patch", action="append", default=[], metavar="NAME",
                   help="what-if: apply bench/patches/sitecustomize.py patch NAME to the service; repeatable")
    p.add_argument("--broker-nodelay", action="store_true", help="what-if: mosquitto with set_tcp_nodelay true")
    p.add_argument("--wait-quiet", type=float, default=60.0,
                   help="wait up to this many seconds for the machine to be idle before each run (default 60; 0: don't)")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, profiles)")
    p.add_argument("--web", action="store_true", help="the chargers page on (ingress mode, a free port, nobody looking)")
    args = p.parse_args(argv)
    args.duration = min(max(args.duration, 1.0), 600.0)
    if args.chargers < 1:
        p.error("--chargers must be at least 1")
    return args


# The yardsticks (bench/baseline.py --mode): the bare library with its default validation (in a thread),
# inline, skipped; and the transport floor (websockets + json, no OCPP library).
YARDSTICKS = ("library-default", "library-inline", "library-off", "transport")
TARGETS = ("service", "baseline", *YARDSTICKS)


def baseline_mode(target: str) -> str:
    return {"baseline": "default", "transport": "transport"}.get(target, target.removeprefix("library-"))


async def run_target(target: str, args: argparse.Namespace, broker: Any, wd: Path) -> dict[str, Any]:
    n = args.chargers
    out: dict[str, Any] = {"target": target, "chargers": n, "interval": args.interval, "duration": args.duration, "ocpp": args.ocpp}
    window_profile = args.profile == "cprofile-window"
    cprofile_out = wd / f"{target}.prof" if (args.profile in ("cprofile", "cprofile-window") and target == "service") else None
    os.environ["OCPP_ADDON_EVENT_LOOP"] = args.event_loop  # the yardsticks run on the same loop as the service
    if args.wait_quiet > 0:
        out["machine_busy_before_pct"] = await asyncio.to_thread(wait_for_quiet, args.wait_quiet)
    if target == "service":
        # Closed loop (and fast intervals) would meet the per-charger rate limit (20/s): lift it, the
        # bench measures cost per message, not the limiter.
        extra: dict[str, Any] = {"ocpp": {"max_message_rate": 100000, "message_burst": 100000}} if args.interval < 0.1 else {}
        if args.web:
            extra["web"] = WEB_ON
        svc, port = await asyncio.to_thread(start_service, wd, broker.port, args.log_level, cprofile_out, extra or None,
                                             args.patch, window_profile)
        out["event_loop"] = svc.event_loop
        out["startup_s"] = svc.startup_seconds
        out["mqtt_online_s"] = await asyncio.to_thread(wait_bridge_online, broker.port)
        out["web"] = args.web
        if args.web and not any("chargers page on port" in line for line in svc.tail):  # logged before the ready line
            svc.stop()
            raise SystemExit("--web: the service did not start the chargers page (see its log)")
    else:
        svc, port = await asyncio.to_thread(start_baseline, wd, baseline_mode(target))
        out["event_loop"] = svc.event_loop
        out["startup_s"] = svc.startup_seconds
    url = f"ws://127.0.0.1:{port}"
    counter = None
    fleet = None
    try:
        await asyncio.sleep(1.0)
        out["rss_empty_kb"] = svc.status()["VmRSS"]
        if target == "service":
            counter = MqttWatch(broker.port, ["ocpp/+/state"])
            await asyncio.to_thread(counter.wait_subscribed)
        if args.pin:
            pin_process(svc.pid, {0})
        spec = FleetSpec(url=url, count=n, interval=args.interval, duration=args.duration, workers=args.workers,
                         concurrency=args.concurrency, deflate=args.deflate, ocpp=args.ocpp, cpus=(1,) if args.pin else None)
        fleet = Fleet(spec)
        cpu_before_connect = svc.cpu_seconds()
        fleet.start()
        ready = await asyncio.to_thread(fleet.wait_ready, args.ready_timeout)
        out.update(ready)
        out["workers"] = spec.worker_count()
        out["connect_cpu_s"] = svc.cpu_seconds() - cpu_before_connect
        await asyncio.sleep(args.settle)
        st = svc.status()
        out["rss_connected_kb"] = st["VmRSS"]
        out["rss_per_charger_kb"] = (st["VmRSS"] - out["rss_empty_kb"]) / max(1, ready["connected"])
        idle_cpu0, idle_t0 = svc.cpu_seconds(), time.monotonic()
        start = fleet.go(0.5)
        out["idle_cpu_pct"] = None
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu0, t0 = svc.cpu_seconds(), time.monotonic()
        if t0 - idle_t0 > 0.2:
            out["idle_cpu_pct"] = 100 * (cpu0 - idle_cpu0) / (t0 - idle_t0)
        mq0 = counter.count if counter else 0
        mos0 = proc_cpu_seconds(broker.process.pid)
        sys0 = system_cpu()
        me0 = time.process_time()
        spy = None
        if window_profile and cprofile_out is not None:
            os.kill(svc.pid, signal.SIGUSR1)
        if args.profile == "pyspy" and target == "service":
            spy = start_pyspy(svc.pid, args.duration, wd / "pyspy.raw", idle=args.profile_idle)
            if spy is None:
                print("py-spy not found (pip install py-spy); profiling skipped", file=sys.stderr)
        await asyncio.sleep(max(0.0, start + args.duration - time.monotonic()))
        if window_profile and cprofile_out is not None:
            os.kill(svc.pid, signal.SIGUSR2)
        cpu1, t1 = svc.cpu_seconds(), time.monotonic()
        mq1 = counter.count if counter else 0
        mos1 = proc_cpu_seconds(broker.process.pid)
        sys1 = system_cpu()
        me1 = time.process_time()
        st = svc.status()
        out["rss_load_kb"] = st["VmRSS"]
        out["rss_hwm_kb"] = st["VmHWM"]
        out["threads"] = st["Threads"]
        out["fds"] = proc_fds(svc.pid)
        stats = await asyncio.to_thread(fleet.results, 60.0 + args.duration)
        wall = t1 - t0
        out["wall_s"] = wall
        out["cpu_s"] = cpu1 - cpu0
        out["cpu_pct"] = 100 * (cpu1 - cpu0) / wall
        out["sent"] = stats.sent
        out["ok"] = stats.ok
        out["msgs_per_s"] = stats.ok / (stats.window or wall)
        out["offered_per_s"] = (n / args.interval) if args.interval > 0 else None
        out["cpu_us_per_msg"] = 1e6 * (cpu1 - cpu0) / stats.ok if stats.ok else None
        out["errors"] = {"call_errors": stats.call_errors, "timeouts": stats.timeouts, "send_failed": stats.send_failed,
                         "disconnects": stats.disconnects, "connect_failed": stats.connect_failed}
        out["error_samples"] = stats.error_samples[:5]
        out["late_ticks"] = stats.late_ticks
        out["rtt_ms"] = pct_summary(stats.rtt_ms)
        out["boot_rtt_ms"] = pct_summary(stats.boot_rtt_ms)
        out["generator_cpu_pct"] = 100 * stats.worker_cpu / (stats.window or wall) / max(1, out["workers"])
        out["mosquitto_cpu_pct"] = 100 * (mos1 - mos0) / wall
        cores = (sys1[1] - sys0[1]) / wall
        out["machine_busy_pct"] = 100 * (sys1[0] - sys0[0]) / wall  # % of one core, all cores summed
        out["machine_cores"] = round(cores)
        ours = (cpu1 - cpu0) + (mos1 - mos0) + stats.worker_cpu + (me1 - me0)
        out["others_cpu_pct"] = max(0.0, out["machine_busy_pct"] - 100 * ours / wall)
        if counter:
            out["mqtt_state_msgs"] = mq1 - mq0
            out["mqtt_state_per_s"] = (mq1 - mq0) / wall
        if spy is not None:
            _, err = await asyncio.to_thread(spy.communicate)
            raw = wd / "pyspy.raw"
            out["profile"] = summarize_pyspy_raw(raw, args.top) if raw.exists() else f"py-spy failed: {err.decode()[-400:]}"
    finally:
        if counter:
            counter.close()
        if fleet is not None:
            await asyncio.to_thread(fleet.release)
        await asyncio.to_thread(svc.stop)
    out["service_warnings"] = svc.warnings
    out["service_errors"] = svc.errors
    if cprofile_out is not None and cprofile_out.exists():
        out["profile"] = summarize_cprofile(cprofile_out, args.top)
    return out


def report(r: dict[str, Any]) -> None:
    kb = lambda v: f"{v / 1024:.1f} MiB"  # noqa: E731
    offered = f"{r['offered_per_s']:.0f}/s offered" if r.get("offered_per_s") else "closed loop (back to back)"
    page = ", chargers page on (nobody looking)" if r.get("web") else ""
    print(f"\n=== {r['target']}" + (f" ({r['event_loop']})" if r.get("event_loop") else "")
          + f": {r['chargers']} chargers, {'TransactionEvent(Updated) (OCPP 2.0.1)' if r.get('ocpp') == '2.0.1' else 'MeterValues'}"
          + f" every {r['interval']:g} s, {r['duration']:g} s window{page} ===")
    print(f"start-up to ready line      {r['startup_s']:.2f} s" + (f" (MQTT online after {r['mqtt_online_s']:.2f} s more)" if r.get("mqtt_online_s") is not None else ""))
    print(f"connect+boot ramp           {r['connected']} connected, {r['booted']} booted, {r['connect_failed']} failed in "
          f"{r['ramp_seconds']:.1f} s ({r['connected'] / max(r['ramp_seconds'], 1e-9):.0f}/s incl. worker start); service CPU {r['connect_cpu_s']:.1f} s")
    print(f"OCPP handled                {r['msgs_per_s']:.0f} msg/s ({r['ok']} of {r['sent']} answered; {offered})")
    print(f"round trip (charger side)   {fmt_ms(r['rtt_ms'])}")
    print(f"errors                      {r['errors']}  late ticks {r['late_ticks']}")
    for sample in r.get("error_samples") or []:
        print(f"    e.g. {sample}")
    if "mqtt_state_per_s" in r:
        print(f"MQTT out (+/state)          {r['mqtt_state_per_s']:.0f} msg/s ({r['mqtt_state_msgs']} messages)")
    per = f"{r['cpu_us_per_msg']:.0f} µs CPU per message" if r.get("cpu_us_per_msg") else ""
    idle = f"; idle with fleet connected {r['idle_cpu_pct']:.1f}%" if r.get("idle_cpu_pct") is not None else ""
    print(f"service CPU                 {r['cpu_pct']:.1f}% of one core ({r['cpu_s']:.2f} s / {r['wall_s']:.1f} s), {per}{idle}")
    print(f"service RSS                 empty {kb(r['rss_empty_kb'])}, fleet connected {kb(r['rss_connected_kb'])}, "
          f"under load {kb(r['rss_load_kb'])}, peak {kb(r['rss_hwm_kb'])}")
    print(f"RSS per connected charger   {r['rss_per_charger_kb']:.1f} kB (connected - empty) / chargers")
    print(f"threads / fds               {r['threads']} / {r['fds']}")
    print(f"mosquitto CPU               {r['mosquitto_cpu_pct']:.1f}%   generator CPU {r['generator_cpu_pct']:.1f}% per worker "
          f"({r['workers']} workers)")
    print(f"service log                 {r['service_warnings']} warnings, {r['service_errors']} errors")
    busy = r.get("machine_busy_pct")
    if busy is not None:
        print(f"machine during window       {busy:.0f}% of one core busy over {r['machine_cores']} cores; "
              f"processes outside this bench (and the kernel) {r['others_cpu_pct']:.0f}%"
              + (f"; before the run {r['machine_busy_before_pct']:.0f}%" if r.get("machine_busy_before_pct") is not None else ""))
        if r["others_cpu_pct"] > 15:
            print("WARNING: something else used the CPU during the window: figures are not comparable; run again on a quiet machine")
    if r.get("profile"):
        print(f"\n--- profile of the {r['target']} ---\n{r['profile']}")


def compare(s: dict[str, Any], b: dict[str, Any]) -> None:
    def ratio(a: Any, c: Any) -> str:
        return f"{a / c:.2f}x" if a and c else "n/a"

    print("\n=== service vs bare ocpp library (same fleet) ===")
    print(f"{'':28}{'service':>14}{'baseline':>14}{'ratio':>9}")
    rows = [
        ("OCPP msg/s", s["msgs_per_s"], b["msgs_per_s"], "{:.0f}"),
        ("CPU % of one core", s["cpu_pct"], b["cpu_pct"], "{:.1f}"),
        ("CPU µs per message", s.get("cpu_us_per_msg"), b.get("cpu_us_per_msg"), "{:.0f}"),
        ("round trip p50 ms", s["rtt_ms"].get("p50"), b["rtt_ms"].get("p50"), "{:.2f}"),
        ("round trip p99 ms", s["rtt_ms"].get("p99"), b["rtt_ms"].get("p99"), "{:.2f}"),
        ("RSS under load MiB", s["rss_load_kb"] / 1024, b["rss_load_kb"] / 1024, "{:.1f}"),
        ("RSS per charger kB", s["rss_per_charger_kb"], b["rss_per_charger_kb"], "{:.1f}"),
        ("start-up s", s["startup_s"], b["startup_s"], "{:.2f}"),
    ]
    for name, a, c, f in rows:
        fa = f.format(a) if a is not None else "n/a"
        fc = f.format(c) if c is not None else "n/a"
        print(f"{name:28}{fa:>14}{fc:>14}{ratio(a, c):>9}")


def rounds_summary(results: list[dict[str, Any]], target: str = "service", others_limit: float = 15.0) -> dict[str, Any] | None:
    """Over the rounds of one run: the median of ``target``'s per-round ratios to the floor, its mean cost over
    the floor's mean cost, and how many rounds were within 1.5x. A round where anything outside the bench used
    more than ``others_limit`` % of a core during either window is left out (and counted)."""
    floors = {r.get("round", 1): r for r in results if r["target"] == "transport"}
    kept: list[tuple[float, float]] = []
    left_out = 0
    for r in results:
        floor = floors.get(r.get("round", 1))
        if r["target"] != target or floor is None or not r.get("cpu_us_per_msg") or not floor.get("cpu_us_per_msg"):
            continue
        if max(r.get("others_cpu_pct", 0), floor.get("others_cpu_pct", 0)) > others_limit:
            left_out += 1
            continue
        kept.append((r["cpu_us_per_msg"], floor["cpu_us_per_msg"]))
    if not kept:
        return None
    ratios = sorted(service / floor for service, floor in kept)
    middle = len(ratios) // 2
    median = ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
    mean_service = sum(service for service, _ in kept) / len(kept)
    mean_floor = sum(floor for _, floor in kept) / len(kept)
    return {"rounds": len(kept), "left_out": left_out, "median_x_floor": round(median, 2),
            "mean_service_us": round(mean_service, 1), "mean_floor_us": round(mean_floor, 1),
            "means_x_floor": round(mean_service / mean_floor, 2), "within_1_5": sum(1 for x in ratios if x <= 1.5)}


def side_by_side(results: list[dict[str, Any]]) -> None:
    """One table: every target of this run, and each one's CPU per message against the transport floor."""
    floors = {r.get("round", 1): r.get("cpu_us_per_msg") for r in results if r["target"] == "transport"}
    print("\n=== side by side (same fleet, same run; floor = transport: websockets + json, no OCPP library) ===")
    print(f"{'round':<6}{'':18}{'loop':>8}{'msg/s':>9}{'CPU %':>8}{'µs/msg':>9}{'x floor':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}{'others %':>10}")
    for r in results:
        per = r.get("cpu_us_per_msg")
        floor = floors.get(r.get("round", 1))
        errors = sum(r["errors"].values())
        print(f"{r.get('round', 1):<6}{r['target']:18}{r.get('event_loop') or '?':>8}{r['msgs_per_s']:>9.0f}{r['cpu_pct']:>8.1f}{(per or 0):>9.0f}"
              f"{(per / floor if per and floor else float('nan')):>9.2f}{(r['rtt_ms'].get('p50') or 0):>8.2f}"
              f"{(r['rtt_ms'].get('p99') or 0):>8.2f}{errors:>8}{r.get('others_cpu_pct', 0):>10.0f}")
    summary = rounds_summary(results)
    if summary is not None and max(r.get("round", 1) for r in results) > 1:
        print(f"service over {summary['rounds']} rounds ({summary['left_out']} left out: others > 15% of a core): "
              f"median {summary['median_x_floor']:.2f}x floor; means {summary['mean_service_us']:.0f} / {summary['mean_floor_us']:.0f} µs = "
              f"{summary['means_x_floor']:.2f}x; {summary['within_1_5']} of {summary['rounds']} rounds within 1.5x")


async def main_async(args: argparse.Namespace) -> int:
    raise_nofile(args.chargers + 2000)
    wd = workdir("throughput")
    print(f"machine: {machine_description()}")
    print(f"code: {git_revision()}" + (f"; what-if patches: {','.join(args.patch)}" if args.patch else "")
          + ("; mosquitto set_tcp_nodelay" if args.broker_nodelay else ""))
    print(f"workdir: {wd}")
    broker = await start_broker(wd, nodelay=args.broker_nodelay)
    results: list[dict[str, Any]] = []
    try:
        targets = [args.target] + (["baseline"] if args.compare_baseline and args.target == "service" else [])
        if args.yardsticks:
            sticks = ("transport",) if args.floor_only else YARDSTICKS
            targets = [args.target, *(y for y in sticks if y != args.target)] * max(1, args.rounds)
        for i, target in enumerate(targets):
            r = await run_target(target, args, broker, wd)
            r["round"] = i * max(1, args.rounds) // len(targets) + 1
            report(r)
            results.append(r)
        if args.yardsticks:
            side_by_side(results)
        elif len(results) == 2:
            compare(results[0], results[1])
        if args.json:
            print(json.dumps([{k: v for k, v in r.items() if k != "profile"} for r in results], default=str))
    finally:
        await broker.stop()
        if not args.keep:
            shutil.rmtree(wd, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
