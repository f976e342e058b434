"""Print requirements.lock: the installed versions of ocpp-addon's runtime dependencies and its [fast] extra, transitively.

Run it with the venv the tests pass in: .venv/bin/python scripts/lock_requirements.py > requirements.lock
"""

from __future__ import annotations

from importlib.metadata import distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# Pinned runtime dependencies for the app image (Dockerfile: pip install --constraint requirements.lock .).
# The versions the test suite ran with; the ranges live in pyproject.toml. Regenerate after changing them:
#   python scripts/lock_requirements.py > requirements.lock"""


def closure(name: str, seen: dict[str, str]) -> dict[str, str]:
    key = canonicalize_name(name)
    if key in seen:
        return seen
    dist = distribution(name)
    seen[key] = dist.version
    for line in dist.requires or []:
        requirement = Requirement(line)
        # Runtime only: skip extras; keep platform markers out so the lock covers the image's Python too.
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        try:
            closure(requirement.name, seen)
        except ModuleNotFoundError:
            pass  # a marker-only dependency not installed here (e.g. for another Python)
    return seen


def main() -> None:
    pins = closure("ocpp-addon", {})
    for line in distribution("ocpp-addon").requires or []:  # the [fast] extra goes into the image too
        requirement = Requirement(line)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": "fast"}) and "extra" in str(requirement.marker):
            closure(requirement.name, pins)
    pins.pop("ocpp-addon")
    print(HEADER)
    for name, version in sorted(pins.items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
