"""Fixtures for end-to-end tests against a real Home Assistant core and a real mosquitto (loopback only).

Every ``ha_e2e`` test runs once per Home Assistant release (``ha_release`` is parametrized): the oldest
the add-on supports (config.yaml's ``homeassistant:``) and the one users run today (HA_CURRENT in
scripts/ha_venv.sh), both set up and cached by ``scripts/ha_venv.sh``. A release that is not set up makes
its tests fail with the reason (the tail of its setup log). Deselect these tests with ``-m "not ha_e2e"``.

Environment: OCPP_HA_RELEASES="V1 V2" (run against these instead), OCPP_HA_CACHE (where the releases
are), OCPP_HA_KEEP=1 (keep HA's config dir and logs).
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from .ha import HaInstall, HaVenvMissing, HomeAssistant, Mosquitto, find_ha_install, releases


_STARTED: list[HomeAssistant] = []
_RUNS: dict[str, float] = {}  # release -> seconds its Home Assistant was up for the tests (start to stop)
_REPORT: list[str] = []  # lines for the terminal summary (e.g. scenario timings)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ha_e2e: end-to-end test against a real Home Assistant core (needs scripts/ha_venv.sh and mosquitto)",
    )


@pytest.fixture(scope="session", params=releases(), ids=lambda version: f"ha{version}")
def ha_release(request: pytest.FixtureRequest) -> HaInstall:
    """One Home Assistant release, as scripts/ha_venv.sh set it up."""
    try:
        return find_ha_install(request.param)
    except HaVenvMissing as err:
        message = str(err)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def e2e_report() -> list[str]:
    """Append lines here to have them printed in the terminal summary (timings, HA's warnings)."""
    return _REPORT


@pytest.fixture(scope="session")
def e2e_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A mosquitto on a free 127.0.0.1 port, shared by the session's e2e tests."""
    broker = Mosquitto(workdir=tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture(scope="session")
def home_assistant(ha_release: HaInstall, e2e_broker: Mosquitto,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    """A started, onboarded Home Assistant of ``ha_release`` with its MQTT integration pointed at ``e2e_broker``."""
    ha = HomeAssistant(tmp_path_factory.mktemp(f"ha-{ha_release.version}-config"), release=ha_release)
    _STARTED.append(ha)
    t0 = time.monotonic()
    try:
        ha.start()
        ha.setup_mqtt(e2e_broker.host, e2e_broker.port)
        yield ha
    finally:
        ha.cleanup()
        _RUNS[ha.version] = time.monotonic() - t0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """On failure, attach the tail of HA's log (and where the whole log lies) to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        ha = getattr(item, "funcargs", {}).get("home_assistant")
        if isinstance(ha, HomeAssistant):
            report.sections.append(("Home Assistant log", f"full log: {ha.log_path}\n{ha.log_tail(150)}"))


def pytest_terminal_summary(terminalreporter) -> None:
    """One line per Home Assistant run: version, Python, start-up times (launch to RUNNING), time in all."""
    for ha in _STARTED:
        times = ", ".join(f"{t:.1f} s" for t in ha.startup_seconds) or "never RUNNING"
        total = f"{_RUNS[ha.version]:.1f} s" if ha.version in _RUNS else "?"
        terminalreporter.write_line(
            f"Home Assistant {ha.version} ({ha.install.kind}, Python {ha.install.python}): up {total} for the "
            f"e2e tests; startups {times} (log: {ha.log_path})")
    for line in _REPORT:
        terminalreporter.write_line(line)
