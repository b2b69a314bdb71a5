"""The operator's metrics endpoint with real reconcile passes behind it, for a Prometheus to
scrape where no Kubernetes API server exists (scripts/monitoring_stack.py).

    python scripts/operator_metrics_target.py PORT

Serves lamina_operator.metrics on PORT as `lamina-operator run --metrics-port` does, and every
second runs the ServingDeployment handler body, wrapped as main.py wraps it, against the
operator's in-memory API server: one deployment that reconciles cleanly, one whose
AutoscalingPolicy does not exist (a retry). The autoscaler series stay empty: its loop needs
pods to read metrics from.
"""

from __future__ import annotations

import logging
import sys
import time

from lamina_operator.constants import API_VERSION, SERVING_KIND
from lamina_operator.handlers.serving import reconcile_serving
from lamina_operator.kube import MemoryKubeClient
from lamina_operator.metrics import observe_reconcile, serve
from lamina_operator.reconcile import ListRecorder, Reconciler

SPECS = {
    "demo": {"model": {"name": "demo", "source": "pvc://models/demo-moe"}},
    "waits-for-policy": {
        "model": {"name": "demo", "source": "pvc://models/demo-moe"},
        "autoscaling": {"policyRef": {"name": "not-created-yet"}},
    },
}


def main(port: int) -> None:
    client = MemoryKubeClient()
    reconciler = Reconciler(client, ListRecorder())
    for name, spec in SPECS.items():
        client.create({"apiVersion": API_VERSION, "kind": SERVING_KIND,
                       "metadata": {"name": name, "namespace": "lamina-demo"}, "spec": spec})  # fmt: skip
    serve(port)
    log = logging.getLogger("operator-target")
    while True:
        for name in SPECS:
            body = client.get(API_VERSION, SERVING_KIND, "lamina-demo", name)
            try:
                with observe_reconcile("ServingDeployment"):
                    reconcile_serving(reconciler, body, log)
            except Exception as exc:  # kopf would retry; here the next second does
                log.debug("%s: %s", name, exc)
        time.sleep(1.0)


if __name__ == "__main__":
    main(int(sys.argv[1]))
