"""Print the pip requirements of the Home Assistant integrations an MQTT-only config loads.

    <ha venv>/bin/python scripts/ha_requirements.py mqtt frontend hassio isal

Runs with the Home Assistant venv's interpreter (any release) and reads the installed manifests: the
named integrations, what bootstrap always sets up (CORE_INTEGRATIONS, DEFAULT_INTEGRATIONS) and their
`dependencies`, transitively. `hass --skip-pip` then starts without reaching for pip at run time.
Requirements go to stdout, one a line; the integrations visited go to stderr.
"""

import json
import sys
from pathlib import Path

import homeassistant.components as comps

root = Path(comps.__path__[0])
try:  # what HA sets up with any configuration.yaml, even without default_config:
    import homeassistant.bootstrap as bootstrap

    always = set(bootstrap.CORE_INTEGRATIONS) | set(bootstrap.DEFAULT_INTEGRATIONS)
except (ImportError, AttributeError):
    always = set()
todo, seen, reqs = sorted(set(sys.argv[1:]) | always), set(), []
while todo:
    domain = todo.pop()
    if domain in seen or not (root / domain / "manifest.json").exists():
        continue
    seen.add(domain)
    manifest = json.loads((root / domain / "manifest.json").read_text())
    for req in manifest.get("requirements", []):
        if req not in reqs:
            reqs.append(req)
    todo.extend(manifest.get("dependencies", []))
print("\n".join(sorted(reqs)))
print(f"integrations: {' '.join(sorted(seen))}", file=sys.stderr)
