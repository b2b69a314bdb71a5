"""The `lamina-operator bench autoscale` subcommand (registered by lamina_operator.cli).

It lives with the operator, not in `lamina bench`: the engine must not import the operator
(tests/test_layering.py), and the simulation runs the operator's own `decide`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .report import CONTROLLERS
from .traces import TRACES


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks of the operator's parts")
    which = bench.add_subparsers(dest="bench", required=True)
    auto = which.add_parser(
        "autoscale",
        help="replay traffic traces through decide and per-pool HPAs on a queueing model",
    )
    auto.add_argument(
        "--traces", default=",".join(TRACES), help=f"comma-separated ({', '.join(TRACES)})"
    )
    auto.add_argument(
        "--controllers", default=",".join(CONTROLLERS),
        help=f"comma-separated ({', '.join(CONTROLLERS)}, or static:P:D for fixed replicas)",
    )  # fmt: skip
    auto.add_argument("--policy", type=Path, help="an AutoscalingPolicy YAML (default: built in)")
    auto.add_argument("--seed", type=int, default=0, help="arrival and length seed")
    auto.add_argument("--out", type=Path, help="write results.json and table.md here")
    auto.add_argument("--plots", type=Path, help="write autoscale-<trace>.png here")


def main(args: argparse.Namespace) -> int:
    from .report import bench, table

    try:
        results = bench(
            args.traces.split(","), args.controllers.split(","), args.out, args.plots,
            args.policy, args.seed,
        )  # fmt: skip
    except ValueError as exc:
        print(f"lamina-operator bench autoscale: {exc}", file=sys.stderr)
        return 2
    print()
    print(table(results), end="")
    return 0
