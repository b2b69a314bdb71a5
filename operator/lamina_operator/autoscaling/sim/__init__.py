"""A queueing simulation of the prefill and decode pools, to judge `decide` against an HPA.

    lamina-operator bench autoscale --out runs/autoscale --plots docs/img

traces.py (arrivals), profile.py (service rates, from docs/benchmarks.md), cluster.py (the pools
as queues, pods with start-up and warm-up), hpa.py (the baseline), run.py (the loop and the
scores), report.py (tables and plots). docs/autoscaling.md shows and explains the results.
"""

from .run import Result, run_trace

__all__ = ["Result", "run_trace"]
