"""`lamina fetch-model SOURCE DIR`: put a checkpoint from the Hub, S3 or the package into a
folder the engine loads (`--model DIR`). The operator runs it in each pod's init container.

One file per source kind (hf.py, s3.py, builtin.py); each resumes into a partly filled DIR and
checks what it wrote. Every failure is a FetchError with a one-line message for the pod status.
"""

from __future__ import annotations

from pathlib import Path

from .errors import FetchError
from .source import ModelSource, parse_source

__all__ = ["FetchError", "ModelSource", "fetch_model", "parse_source"]


def fetch_model(source: str, dest: Path) -> str:
    """Fetch `source` into `dest` (created if missing); returns a one-line summary."""
    parsed = parse_source(source)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the model folder {dest}: {exc.strerror}") from exc
    if parsed.scheme == "hf":
        from .hf import fetch_hf as fetch
    elif parsed.scheme == "s3":
        from .s3 import fetch_s3 as fetch
    else:
        from .builtin import fetch_builtin as fetch
    try:
        summary = fetch(parsed, dest)
    except OSError as exc:  # disk full, read-only volume, a shipped file missing
        raise FetchError(f"fetching {source} into {dest} failed: {exc}") from exc
    if not (dest / "config.json").is_file():
        names = sorted(p.name for p in dest.iterdir() if not p.name.startswith("."))[:5]
        raise FetchError(
            f"{source} holds no config.json (found: {', '.join(names) or 'nothing'}): it is not "
            "an HF-format checkpoint folder; point the source at the folder holding config.json"
        )
    return summary
