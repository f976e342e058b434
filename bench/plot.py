"""Plot: closed-loop msg/s and CPU per message vs chargers, the service beside its yardsticks.

Runs bench/throughput.py's measurement (``run_target``) for every target (the service, the bare
library with default / inline / no validation, the transport floor) at every fleet size, closed loop
(each charger sends its next MeterValues as soon as the previous one is answered), on one broker, in
one run: on a shared machine only figures from one run compare. Prints a table (with the machine's
load average before each point), writes the figures as JSON beside the picture, and draws two panels:
messages per second answered, and service CPU per message, both against the number of chargers.

matplotlib is a bench-only dependency (``pip install 'matplotlib>=3.7,<4'``), never the service's.

Examples:
    python bench/plot.py                                   # 100, 500, 2000, 5000 chargers; docs/throughput.png
    python bench/plot.py --chargers 100,1000 --targets service,transport --duration 5 --out /tmp/t.png
    python bench/plot.py --from-json docs/throughput.json   # redraw without measuring
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402
from common import git_revision, machine_description, raise_nofile, start_broker, workdir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LABELS = {
    "service": "ocpp_addon (validation + MQTT)",
    "library-default": "ocpp library, default (validation in a thread)",
    "library-inline": "ocpp library, validation inline",
    "library-off": "ocpp library, validation off",
    "transport": "transport floor (websockets + json)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chargers", default="100,500,2000,5000", help="fleet sizes, comma separated (default 100,500,2000,5000)")
    p.add_argument("--targets", default=",".join(("service", *throughput.YARDSTICKS)),
                   help="what to load, comma separated (default: the service and every yardstick)")
    p.add_argument("--duration", type=float, default=8.0, help="measured window per point in seconds (default 8)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "throughput.png", help="picture to write (default docs/throughput.png)")
    p.add_argument("--from-json", type=Path, help="draw from figures written by an earlier run instead of measuring")
    args = p.parse_args(argv)
    args.sizes = [int(n) for n in args.chargers.split(",") if n.strip()]
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_list) - set(LABELS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}; known: {', '.join(LABELS)}")
    return args


def load_average() -> float:
    return os.getloadavg()[0]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(max(args.sizes) + 2000)
    wd = workdir("plot")
    broker = await start_broker(wd)
    points: list[dict[str, Any]] = []
    try:
        for n in args.sizes:
            for target in args.target_list:
                run_args = throughput.parse_args(["--chargers", str(n), "--interval", "0", "--duration", str(args.duration),
                                                  "--wait-quiet", "0", "--target", target])
                load = load_average()
                r = await throughput.run_target(target, run_args, broker, wd)
                point = {"target": target, "chargers": n, "msgs_per_s": r["msgs_per_s"], "cpu_pct": r["cpu_pct"],
                         "cpu_us_per_msg": r["cpu_us_per_msg"], "errors": sum(r["errors"].values()),
                         "others_cpu_pct": r.get("others_cpu_pct"), "load_1min_before": load}
                points.append(point)
                print(f"{n:>7} {target:16} {point['msgs_per_s']:>8.0f} msg/s {point['cpu_pct']:>6.1f}% CPU "
                      f"{(point['cpu_us_per_msg'] or 0):>7.0f} µs/msg  errors {point['errors']}  "
                      f"others {point['others_cpu_pct'] or 0:.0f}%  load before {load:.2f}", flush=True)
    finally:
        await broker.stop()
        shutil.rmtree(wd, ignore_errors=True)
    return {"machine": machine_description(), "code": git_revision(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "duration_s": args.duration, "points": points}


def draw(figures: dict[str, Any], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, cost) = plt.subplots(1, 2, figsize=(11, 4.2))
    for target, label in LABELS.items():
        pts = sorted((p for p in figures["points"] if p["target"] == target), key=lambda p: p["chargers"])
        if not pts:
            continue
        xs = [p["chargers"] for p in pts]
        style = {"linewidth": 2.6, "color": "black"} if target == "service" else {"linewidth": 1.3, "linestyle": "--"}
        rate.plot(xs, [p["msgs_per_s"] for p in pts], marker="o", label=label, **style)
        cost.plot(xs, [p["cpu_us_per_msg"] or 0 for p in pts], marker="o", label=label, **style)
    sizes = sorted({p["chargers"] for p in figures["points"]})
    for ax in (rate, cost):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("chargers (closed loop: next MeterValues as soon as answered)")
        ax.grid(True, which="both", alpha=0.3)
    rate.set_ylabel("MeterValues answered per second")
    rate.set_title("throughput (server on one core)")
    cost.set_ylabel("server CPU per message (µs)")
    cost.set_title("CPU per message (lower is better)")
    cost.set_ylim(bottom=0)
    rate.set_ylim(bottom=0)
    loads = [p["load_1min_before"] for p in figures["points"]]
    fig.suptitle(f"{figures['machine']}\ncode {figures['code']}; {figures['when']}; 1-min load average before the points {min(loads):.1f}–{max(loads):.1f} "
                 "(a shared machine)", fontsize=8)
    handles, labels = cost.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        figures = json.loads(args.from_json.read_text())
    else:
        figures = asyncio.run(measure(args))
        figures_file = args.out.with_suffix(".json")
        figures_file.parent.mkdir(parents=True, exist_ok=True)
        figures_file.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {figures_file}")
    draw(figures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
