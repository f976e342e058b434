"""Which Home Assistant releases the e2e tests run against, and what a missing one says (no HA started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .ha import HaInstall, HaVenvMissing, find_ha_install, oldest_release, releases, version_tuple


def test_the_oldest_declared_and_the_current_release_both_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCPP_HA_RELEASES", raising=False)
    oldest, current = releases()
    assert oldest == oldest_release()  # config.yaml's homeassistant:, what the Supervisor enforces
    assert version_tuple(oldest) < version_tuple(current)


def test_a_release_that_was_not_set_up_fails_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCPP_HA_CACHE", str(tmp_path))
    (tmp_path / "ha-2099.1.0").mkdir()
    (tmp_path / "ha-2099.1.0" / "setup.log").write_text("ERROR: No matching distribution found for homeassistant==2099.1.0\n")
    with pytest.raises(HaVenvMissing) as err:
        find_ha_install("2099.1.0")
    assert "ha-2099.1.0/ha.json is missing" in str(err.value)
    assert "No matching distribution found" in str(err.value)
    assert "scripts/ha_venv.sh" in str(err.value)


def test_a_release_in_the_debian_root_runs_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCPP_HA_CACHE", str(tmp_path))
    root = tmp_path / "debian-sid"
    hass = root / "opt" / "ha-2099.1.0" / "bin" / "hass"
    hass.parent.mkdir(parents=True)
    hass.touch()
    (tmp_path / "ha-2099.1.0").mkdir()
    (tmp_path / "ha-2099.1.0" / "ha.json").write_text(json.dumps(
        {"version": "2099.1.0", "kind": "chroot", "root": str(root), "hass": "/opt/ha-2099.1.0/bin/hass", "python": "3.14.9"}))
    install = find_ha_install("2099.1.0")
    assert install == HaInstall("2099.1.0", "chroot", "/opt/ha-2099.1.0/bin/hass", "3.14.9", str(root))
    command = install.command(Path("/tmp/cfg"), "--log-file", "/tmp/cfg/home-assistant.log")
    assert command[:3] == ["unshare", "-m", "--"]
    assert command[-8:] == [str(root), "/tmp/cfg", "/opt/ha-2099.1.0/bin/hass", "--skip-pip", "-c", "/tmp/cfg",
                            "--log-file", "/tmp/cfg/home-assistant.log"]
    assert install.env()["PATH"].startswith("/opt/ha-2099.1.0/bin:")
    hass.unlink()  # a pruned cache: the descriptor alone is not enough
    with pytest.raises(HaVenvMissing, match="which is gone"):
        find_ha_install("2099.1.0")
