"""The `fetch-model` subcommand. A failure exits 1 with one line on stderr, also written to the
container's termination message file, so `kubectl describe pod` shows why the pod is not
starting instead of a crash loop without a reason."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' default terminationMessagePath


def register(sub) -> None:
    f = sub.add_parser(
        "fetch-model",
        help="download a checkpoint (hf://, s3://, builtin://) into a folder `--model` can load",
    )
    f.add_argument(
        "source", help="hf://org/name[@revision], s3://bucket/prefix, builtin://lamina-demo"
    )
    f.add_argument("dir", type=Path, help="folder to fill (created; a partial one is resumed)")
    f.add_argument(
        "--termination-log",
        default=TERMINATION_LOG,
        help="where a failure's one-line reason is also written, if writable",
    )
    f.set_defaults(func=cmd_fetch_model)


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from lamina_engine.model_fetch import FetchError, fetch_model

    t0 = time.perf_counter()
    try:
        summary = fetch_model(args.source, args.dir)
    except FetchError as exc:
        message = f"lamina fetch-model: {exc}"
        print(message, file=sys.stderr)
        _write_termination_log(args.termination_log, message)
        return 1
    print(f"fetched {args.source} into {args.dir} in {time.perf_counter() - t0:.1f}s: {summary}")
    return 0


def _write_termination_log(path: str, message: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(message + "\n")
    except OSError:
        pass  # outside a pod the file is not there: stderr already has the message
