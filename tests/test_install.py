"""What a user gets: the folder copied to /addons, where the repository URL lives, the documented options,
and the scripts of the README's two commands (run.sh must not reinstall on every start).

The image built from that folder, and run, is tests/test_image.py (marker ``image``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ocpp_addon import config as config_module, supervisor

from .test_addon import MANIFEST, supervisor_validate

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
DOCS = (ROOT / "DOCS.md").read_text(encoding="utf-8")


def test_build_yaml_gives_older_supervisors_the_same_python_base_for_each_arch() -> None:
    """Supervisors before 2026.04 always pass BUILD_FROM: without build.yaml, the plain base (no Python)."""
    build = yaml.safe_load((ROOT / "build.yaml").read_text(encoding="utf-8"))
    default = re.search(r"^ARG BUILD_FROM=\S+/base-python:(\S+)$", DOCKERFILE, re.M).group(1)
    assert set(build["build_from"]) == set(MANIFEST["arch"])
    for arch, image in build["build_from"].items():
        assert image == f"ghcr.io/home-assistant/{arch}-base-python:{default}"


# -- the folder a user copies into /addons ------------------------------------------------------------------------


def app_folder_files() -> list[str]:
    """What a clone holds (tracked files, plus new ones not ignored): the folder a user copies to /addons."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.fail(f"the image test builds from the files of a git checkout; git ls-files failed: {listed.stderr}")
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


def test_the_folder_a_user_copies_holds_what_the_supervisor_needs() -> None:
    files = set(app_folder_files())
    # The Supervisor reads config.yaml (+ build.yaml when present) and builds the Dockerfile in this folder; the
    # store shows icon.png/logo.png, README.md, DOCS.md (Documentation tab), CHANGELOG.md, translations/en.yaml.
    needed = {"config.yaml", "build.yaml", "Dockerfile", "icon.png", "logo.png", "README.md", "DOCS.md",
              "CHANGELOG.md", "translations/en.yaml", "apparmor.txt"}
    assert needed <= files, f"missing from the app folder: {sorted(needed - files)}"
    for source in re.findall(r"^COPY ((?:\S+ )+)\S+$", DOCKERFILE, re.M):
        for name in source.split():
            assert name in files or any(f.startswith(name.rstrip("/") + "/") for f in files), f"COPY {name}: not in the folder"
    # .dockerignore keeps a developer's .venv or test data out of the build context, but not what COPY needs.
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for sources in re.findall(r"^COPY ((?:\S+ )+)\S+$", DOCKERFILE, re.M):
        for name in sources.split():
            assert f"!{name}" in ignore or f"!{name.rstrip('/')}/" in ignore, f".dockerignore leaves out COPY {name}"




def test_the_repository_url_is_set_in_one_place() -> None:
    """repository.yaml and config.yaml carry it ("set when you publish"); prose never shows a made-up one."""
    url = yaml.safe_load((ROOT / "repository.yaml").read_text(encoding="utf-8"))["url"]
    assert MANIFEST["url"] == url
    for name in app_folder_files():
        if name in ("repository.yaml", "config.yaml") or name.endswith((".png", ".tgz")):
            continue
        text = (ROOT / name).read_text(encoding="utf-8", errors="replace")
        assert url not in text, f"{name} names the repository URL; keep it in repository.yaml and config.yaml"


def test_docs_name_each_lifted_option_next_to_its_yaml_section() -> None:
    rows = dict(re.findall(r"^\| `(\w+)`[^|]*\| `([\w.]+)` \|$", DOCS, re.M))
    assert rows == {key: ".".join(path) for key, path in supervisor.LIFTED.items()}


def test_the_documented_password_list_is_what_the_supervisor_and_the_app_accept() -> None:
    example = next(yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", DOCS, re.S)
                   if "ocpp_auth_passwords" in block)
    options = {**MANIFEST["options"], **example}
    config = config_module.validate(supervisor.options_to_config(supervisor_validate(MANIFEST["schema"], options)))
    assert config["ocpp"]["auth"]["mode"] == "basic"
    assert set(config["ocpp"]["auth"]["passwords"]) == {entry["id"] for entry in example["ocpp_auth_passwords"]}


# -- the README's commands --------------------------------------------------------------------------------------------


def _installed_record(project: Path) -> int:
    """When pip last wrote the package's install record (a reinstall rewrites it)."""
    records = list(project.glob(".venv/lib/python*/site-packages/ocpp_addon-*.dist-info/RECORD"))
    assert len(records) == 1, records
    return records[0].stat().st_mtime_ns


@pytest.mark.timeout(600)
def test_run_sh_installs_only_when_pyproject_or_the_package_changed(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "ocpp_addon", project / "ocpp_addon", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "scripts" / "venv.sh", project / "scripts" / "venv.sh")
    assert "bash scripts/venv.sh '.[fast]'" in (ROOT / "scripts" / "run.sh").read_text(encoding="utf-8")  # as run.sh installs
    env = {**os.environ, "PYTHON": sys._base_executable}

    def venv_sh() -> None:
        result = subprocess.run(["bash", "scripts/venv.sh", ".[fast]"], cwd=project, env=env, capture_output=True, text=True, timeout=540)
        assert result.returncode == 0, result.stderr[-3000:]

    venv_sh()
    first = _installed_record(project)
    # the README's run command runs on uvloop, as the add-on image does
    assert subprocess.run([str(project / ".venv" / "bin" / "python"), "-c", "import uvloop"], capture_output=True, timeout=60).returncode == 0
    venv_sh()  # nothing changed: no pip at all
    assert _installed_record(project) == first
    with (project / "ocpp_addon" / "__init__.py").open("a", encoding="utf-8") as module:
        module.write("# changed\n")
    venv_sh()
    second = _installed_record(project)
    assert second != first
    with (project / "pyproject.toml").open("a", encoding="utf-8") as pyproject:
        pyproject.write("# changed\n")
    venv_sh()
    assert _installed_record(project) != second


def test_run_sh_and_test_sh_install_what_the_readme_uses() -> None:
    ensure = (ROOT / "scripts" / "ensure-mosquitto.sh").read_text(encoding="utf-8")
    assert "mosquitto-clients" in ensure and "mosquitto_pub" in ensure
    assert "bash scripts/ensure-mosquitto.sh" in (ROOT / "scripts" / "run.sh").read_text(encoding="utf-8")
    test_sh = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    for step in ("scripts/ensure-mosquitto.sh", "scripts/venv.sh", "scripts/ha_venv.sh", "scripts/image_base.sh"):
        assert f"bash {step}" in test_sh
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
