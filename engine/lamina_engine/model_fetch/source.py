"""A checkpoint source a user writes (`hf://org/name@rev`, `s3://bucket/prefix`,
`builtin://lamina-demo`), parsed into the pieces a fetcher needs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FetchError

_HF = re.compile(
    r"^(?P<repo>[A-Za-z0-9][-._A-Za-z0-9]*/[A-Za-z0-9][-._A-Za-z0-9]*)(@(?P<rev>.+))?$"
)
_S3 = re.compile(r"^(?P<bucket>[a-z0-9][-.a-z0-9]{1,61}[a-z0-9])(/(?P<prefix>.*))?$")
BUILTIN_MODELS = ("lamina-demo",)
EXAMPLES = "hf://org/name[@revision], s3://bucket/prefix or builtin://lamina-demo"


@dataclass(frozen=True)
class ModelSource:
    """scheme: hf | s3 | builtin. hf: location = repo id, revision = branch/tag/commit.
    s3: location = bucket, prefix = key prefix ('' or ending in '/'). builtin: location = name."""

    scheme: str
    location: str
    revision: str = "main"
    prefix: str = ""

    def __str__(self) -> str:
        if self.scheme == "hf":
            return f"hf://{self.location}@{self.revision}"
        if self.scheme == "s3":
            return f"s3://{self.location}/{self.prefix}"
        return f"builtin://{self.location}"


def parse_source(text: str) -> ModelSource:
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise FetchError(f"model source {text!r} has no scheme; write {EXAMPLES}")
    if scheme == "hf":
        m = _HF.match(rest)
        if not m:
            raise FetchError(f"model source {text!r} is malformed; write hf://org/name[@revision]")
        return ModelSource("hf", m["repo"], revision=m["rev"] or "main")
    if scheme == "s3":
        m = _S3.match(rest)
        if not m:
            raise FetchError(f"model source {text!r} is malformed; write s3://bucket/prefix")
        prefix = (m["prefix"] or "").strip("/")
        return ModelSource("s3", m["bucket"], prefix=f"{prefix}/" if prefix else "")
    if scheme == "builtin":
        if rest not in BUILTIN_MODELS:
            raise FetchError(
                f"unknown built-in model {rest!r}; built-in models: {', '.join(BUILTIN_MODELS)}"
            )
        return ModelSource("builtin", rest)
    if scheme == "pvc":
        raise FetchError(
            f"{text!r} is a PersistentVolumeClaim: the operator mounts it, nothing to fetch"
        )
    raise FetchError(f"unknown model source scheme {scheme!r} in {text!r}; write {EXAMPLES}")
