"""`lamina-operator`: run the operator, or render its CRDs.

    lamina-operator run [--namespace NS ... | --all-namespaces] [--liveness-port 8080]
                        [--metrics-port 9090]
                        [--peering NAME | --standalone] [--priority N] [--verbose]
    lamina-operator crds [--output DIR] [--check]
    lamina-operator bench autoscale [--traces ...] [--out DIR] [--plots DIR]

`run` uses in-cluster credentials inside a pod, else the current kubeconfig context.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .autoscaling.sim import cli as autoscale_bench
from .constants import PEERING_NAME


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamina-operator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the kopf operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], metavar="NS",
        help="watch this namespace (repeatable; glob patterns such as 'team-*' work)",
    )  # fmt: skip
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    run.add_argument(
        "--liveness-port", type=int, default=8080,
        help="serve GET /healthz on this port (0 turns it off); default 8080",
    )  # fmt: skip
    run.add_argument(
        "--metrics-port", type=int, default=9090,
        help="serve Prometheus GET /metrics on this port (0 turns it off); default 9090",
    )  # fmt: skip
    peering = run.add_mutually_exclusive_group()
    peering.add_argument(
        "--peering", metavar="NAME",
        help="leader election through this kopf peering object, which must exist (a "
        "ClusterKopfPeering with --all-namespaces, else a KopfPeering per namespace); nothing "
        f"is reconciled until it does. Without this flag: {PEERING_NAME!r} if it exists, "
        "else standalone with a warning",
    )  # fmt: skip
    peering.add_argument(
        "--standalone", action="store_true", help="no leader election (one replica only)"
    )
    run.add_argument("--priority", type=int, default=0, help="peering priority of this replica")
    run.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")

    crds = sub.add_parser("crds", help="print or write the CRDs generated from the models")
    crds.add_argument("-o", "--output", type=Path, help="write one YAML file per CRD into DIR")
    crds.add_argument(
        "--check", action="store_true",
        help="with --output: exit 1 if the files in DIR differ from the models (write nothing)",
    )  # fmt: skip
    autoscale_bench.add_parser(sub)
    return parser


def _crds(output: Path | None, check: bool) -> int:
    from .crdgen import render_all, to_yaml

    rendered = {name: to_yaml(crd) for name, crd in render_all().items()}
    if output is None:
        sys.stdout.write("---\n".join(rendered.values()))
        return 0
    if check:
        stale = [n for n, text in rendered.items() if _read(output / n) != text]
        for name in stale:
            print(f"{output / name} is out of date: run `lamina-operator crds --output {output}`")
        return 1 if stale else 0
    output.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (output / name).write_text(text)
        print(f"wrote {output / name}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _run(args: argparse.Namespace) -> int:
    import kopf

    from . import main as _handlers  # noqa: F401  (importing registers the handlers)

    if not args.all_namespaces and not args.namespace:
        print(
            "lamina-operator run: say which namespaces to watch: --namespace NS (repeatable) "
            "or --all-namespaces",
            file=sys.stderr,
        )
        return 2
    if args.metrics_port and args.metrics_port == args.liveness_port:
        print(
            f"lamina-operator run: --metrics-port and --liveness-port are both "
            f"{args.metrics_port}: give them different ports (or 0 to turn one off)",
            file=sys.stderr,
        )
        return 2
    from .settings import SCAN_CLUSTER, needs_cluster_scan

    SCAN_CLUSTER["enabled"] = needs_cluster_scan(args.all_namespaces, args.namespace)
    kopf.configure(verbose=args.verbose)
    if args.metrics_port:
        from .metrics import serve

        serve(args.metrics_port)
    kopf.run(
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        standalone=args.standalone,
        # Without --peering, kopf starts with peering optional; the startup handler makes it
        # mandatory if the object exists, else standalone (handlers/peering.py).
        peering_name=args.peering,
        priority=args.priority,
        memo=kopf.Memo(namespaces=args.namespace),
        liveness_endpoint=(
            f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
        ),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "crds" and args.check and args.output is None:
        parser.error("crds --check needs --output DIR: the directory to compare, e.g. crds")
    if args.command == "crds":
        return _crds(args.output, args.check)
    if args.command == "bench":
        return autoscale_bench.main(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
