"""Fixtures for end-to-end tests against a real Home Assistant core and a real mosquitto (loopback only).

The Home Assistant venv is built by ``scripts/ha_venv.sh`` (Python >= 3.13, cached); without it every
``ha_e2e`` test fails with a message saying so. Deselect these tests with ``-m "not ha_e2e"``.

Environment: OCPP_HA_VENV (venv location), OCPP_HA_KEEP=1 (keep HA's config dir and logs).
"""

from __future__ import annotations

from typing import Iterator

import pytest

from .ha import HaVenvMissing, HomeAssistant, Mosquitto, find_ha_venv


_STARTED: list[HomeAssistant] = []
_REPORT: list[str] = []  # lines for the terminal summary (e.g. scenario timings)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ha_e2e: end-to-end test against a real Home Assistant core (needs scripts/ha_venv.sh and mosquitto)",
    )


@pytest.fixture(scope="session")
def ha_venv():
    try:
        return find_ha_venv()
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
def home_assistant(ha_venv, e2e_broker: Mosquitto,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    """A started, onboarded Home Assistant with its MQTT integration pointed at ``e2e_broker``."""
    ha = HomeAssistant(tmp_path_factory.mktemp("ha-config"), venv=ha_venv)
    _STARTED.append(ha)
    ha.start()
    try:
        ha.setup_mqtt(e2e_broker.host, e2e_broker.port)
        yield ha
    finally:
        ha.cleanup()


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
    """One line per Home Assistant run: version and start-up times (launch to RUNNING)."""
    for ha in _STARTED:
        times = ", ".join(f"{t:.1f} s" for t in ha.startup_seconds) or "never RUNNING"
        terminalreporter.write_line(f"Home Assistant {ha.version} startups: {times} (log: {ha.log_path})")
    for line in _REPORT:
        terminalreporter.write_line(line)
