"""Command line: ``python -m ocpp_addon [--config FILE]`` (also the ``ocpp-addon`` script)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from . import __version__
from . import config as config_module, supervisor
from .logs import OneLineFormatter
from .app import event_loop_factory, run


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ocpp-addon", description="OCPP 1.6J and 2.0.1 central system bridged to MQTT and Home Assistant")
    parser.add_argument("--config", "-c", help="YAML config file (default: built-in defaults + environment)")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # One record, one line: a charger-chosen string with a newline cannot forge a log line.
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # The ocpp library logs every frame at INFO and tracebacks for bad frames; we log our own lines.
    logging.getLogger("ocpp").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.INFO if level == "debug" else logging.WARNING)
    logging.getLogger("paho.mqtt").setLevel(logging.WARNING)


async def _main(config: dict, addon_options: dict | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if addon_options is not None:  # the MQTT broker may still have to come from the Supervisor
        resolved = await supervisor.with_mqtt_service(addon_options, stop)
        if resolved is None:
            return
        config = resolved
    await run(config, stop)


def raise_open_file_limit() -> None:
    """Each charger is a socket; the usual soft limit of 1,024 open files would cap us near 1,000 chargers."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard))
    except (ImportError, ValueError, OSError):
        pass  # not on this platform, or not allowed: the default limit stays


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Inside a Home Assistant app the Supervisor sets SUPERVISOR_TOKEN: options come from /data/options.json.
    addon_options: dict | None = None
    try:
        if os.environ.get("SUPERVISOR_TOKEN") and not args.config:
            addon_options, config = supervisor.load()
        else:
            config = config_module.load(args.config)
    except config_module.ConfigError as err:
        print(f"ocpp-addon: configuration error: {err}", file=sys.stderr)
        return 2
    if args.check:
        print("configuration OK")
        return 0
    setup_logging(config["log_level"])
    raise_open_file_limit()
    _, loop_factory = event_loop_factory()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_main(config, addon_options))
    except OSError as err:  # e.g. the OCPP port is taken
        logging.getLogger("ocpp_addon").error("cannot start: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
