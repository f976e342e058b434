"""Run the service under cProfile, profiling only between SIGUSR1 (start) and SIGUSR2 (stop + write).

Used by ``throughput.py --profile cprofile-window``: the profile covers the measured window
only, and with ``--timer thread`` (default) it counts the main thread's CPU time
(``time.thread_time``), so time spent waiting for a CPU on a busy, shared machine is not
charged to whatever function happened to be running. The main thread is the event loop; paho's
network thread is not profiled.

    python bench/profile_service.py --out service.prof -- --config config.yaml
    kill -USR1 <pid>   # start profiling
    kill -USR2 <pid>   # stop and write service.prof
"""

from __future__ import annotations

import argparse
import cProfile
import signal
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where to write the pstats file")
    parser.add_argument("--timer", choices=("thread", "wall"), default="thread",
                        help="thread: main-thread CPU time (default); wall: perf_counter")
    parser.add_argument("service_args", nargs=argparse.REMAINDER, help="-- then the arguments of python -m ocpp_addon")
    args = parser.parse_args()
    service_args = args.service_args[1:] if args.service_args[:1] == ["--"] else args.service_args

    profiler = cProfile.Profile(time.thread_time if args.timer == "thread" else time.perf_counter)
    state = {"on": False}

    def start(signum: int, frame: object) -> None:
        if not state["on"]:
            state["on"] = True
            profiler.enable()

    def stop(signum: int, frame: object) -> None:
        if state["on"]:
            profiler.disable()
            state["on"] = False
            profiler.dump_stats(args.out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from ocpp_addon.__main__ import main as service_main

    try:
        return service_main(service_args)
    finally:
        stop(signal.SIGUSR2, None)


if __name__ == "__main__":
    sys.exit(main())
