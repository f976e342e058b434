"""Draw DOCS.md's deployment picture: docs/deployment.png (and .svg) from a graphviz description.

    python scripts/draw_deployment.py        # needs graphviz's `dot` (apt-get install graphviz)

The picture is the deployment that tests/test_cluster.py starts (docs/cluster/ holds its files):
chargers -> HAProxy -> instances -> HAProxy's MQTT frontends -> bridged mosquitto nodes <- Home Assistant.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs"

GRAPH = r"""
digraph deployment {
  graph [rankdir=LR, fontname="Helvetica", fontsize=11, nodesep=0.35, ranksep=0.7, bgcolor="white", pad=0.2];
  node  [fontname="Helvetica", fontsize=11, shape=box, style="rounded,filled", fillcolor="#f4f6f8", color="#8a96a3"];
  edge  [fontname="Helvetica", fontsize=9, color="#56616c"];

  chargers [label="chargers\nws://balancer:9000/<charge point id>", shape=box3d, fillcolor="#fff7e0"];

  subgraph cluster_lb {
    label="HAProxy"; style="rounded,dashed"; color="#8a96a3";
    ocpp_fe [label="frontend ocpp (HTTP)\nbalance uri, hash-type consistent\nhealth: GET /-/health", fillcolor="#e8f1fb"];
    mqtt_fe1 [label="frontend mqtt_node1 (TCP)\nnode1, backup node2", fillcolor="#e8f1fb"];
    mqtt_fe2 [label="frontend mqtt_node2 (TCP)\nnode2, backup node1", fillcolor="#e8f1fb"];
  }

  subgraph cluster_instances {
    label="ocpp_addon instances"; style="rounded,dashed"; color="#8a96a3";
    a [label="instance_id: a\ndata_dir /data/a"];
    b [label="instance_id: b\ndata_dir /data/b"];
    c [label="instance_id: c\ndata_dir /data/c"];
  }

  subgraph cluster_broker {
    label="MQTT broker cluster"; style="rounded,dashed"; color="#8a96a3";
    node1 [label="mosquitto node1", fillcolor="#e9f7ec"];
    node2 [label="mosquitto node2\nbridge: topic # both 1", fillcolor="#e9f7ec"];
  }

  ha [label="Home Assistant\nMQTT integration", shape=component, fillcolor="#fdeef0"];

  chargers -> ocpp_fe [label="OCPP 1.6J"];
  ocpp_fe -> a; ocpp_fe -> b; ocpp_fe -> c;
  a -> mqtt_fe1; c -> mqtt_fe1; b -> mqtt_fe2;
  mqtt_fe1 -> node1; mqtt_fe1 -> node2 [style=dashed, label="if node1 is down"];
  mqtt_fe2 -> node2; mqtt_fe2 -> node1 [style=dashed, label="if node2 is down"];
  node2 -> node1 [dir=both, label="bridge", color="#2f8f46", penwidth=1.6, constraint=false];
  ha -> node1 [label="discovery, state,\nsetpoints"];
}
"""


def main() -> int:
    dot = shutil.which("dot")
    if dot is None:
        print("graphviz's dot is missing: apt-get install graphviz (scripts/ensure-cluster.sh does it)", file=sys.stderr)
        return 1
    OUT.mkdir(exist_ok=True)
    for fmt in ("png", "svg"):
        target = OUT / f"deployment.{fmt}"
        extra = ["-Gdpi=110"] if fmt == "png" else []
        subprocess.run([dot, f"-T{fmt}", *extra, "-o", str(target)], input=GRAPH, text=True, check=True)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
