"""A thin kubectl wrapper for the e2e suite: real client, JSON out, polling waits.

kubectl (not the Python client) on purpose: it is what users run, and its errors are what users
read, so the suite asserts on exactly that text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class KubectlError(RuntimeError):
    """kubectl exited non-zero; `stderr` holds the API server's message."""

    def __init__(self, argv: list[str], stderr: str):
        super().__init__(f"kubectl {' '.join(argv)} failed: {stderr.strip()}")
        self.stderr = stderr


def kubectl_binary() -> str:
    # 1.32 on the machine image; Debian's kubernetes-client (1.20) also works.
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        raise RuntimeError("kubectl is not on PATH; install it or set KUBECTL=/path/to/kubectl")
    return found


@dataclass
class Kubectl:
    kubeconfig: Path
    namespace: str | None = None

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        argv = list(args)
        if self.namespace and "-n" not in argv and "--all-namespaces" not in argv:
            argv = ["-n", self.namespace, *argv]
        proc = subprocess.run(
            [kubectl_binary(), f"--kubeconfig={self.kubeconfig}", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise KubectlError(argv, proc.stderr)
        return proc.stdout

    def in_namespace(self, namespace: str) -> Kubectl:
        return Kubectl(self.kubeconfig, namespace)

    def apply(self, docs: list[dict] | dict | str, *extra: str) -> str:
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(_as_list(docs))
        return self.run("apply", "-f", "-", *extra, stdin=text)

    def create(self, docs: list[dict] | dict | str) -> str:
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(_as_list(docs))
        return self.run("create", "-f", "-", stdin=text)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return json.loads(self.run("get", kind, name, "-o", "json"))
        except KubectlError as err:
            if "NotFound" in err.stderr or "not found" in err.stderr:
                return None
            raise

    def list(self, kind: str, *selector: str) -> list[dict[str, Any]]:
        return json.loads(self.run("get", kind, *selector, "-o", "json"))["items"]

    def delete(self, kind: str, name: str, *extra: str) -> str:
        return self.run("delete", kind, name, "--ignore-not-found", *extra)

    def owned_by(self, kind: str, owner_uid: str) -> list[dict[str, Any]]:
        """Objects of `kind` in the namespace whose ownerReferences name `owner_uid`."""
        return [
            obj
            for obj in self.list(kind)
            if any(
                ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences", [])
            )
        ]

    def events_for(self, kind: str, name: str) -> list[dict[str, Any]]:
        return [
            ev
            for ev in self.list("events")
            if ev["involvedObject"].get("kind") == kind and ev["involvedObject"].get("name") == name
        ]


def _as_list(docs: list[dict] | dict) -> list[dict]:
    return docs if isinstance(docs, list) else [docs]


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    """The status condition of type `ctype`, or None."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None
