"""An in-memory KubeClient for tests: enough apiserver behaviour to test the reconciler.

It does: uid/resourceVersion/generation/creationTimestamp, 404/409 errors, label-selected
lists, merge patches, status subresource separation (a status patch changes only status, a main
patch never changes status), Secret stringData -> base64 data, a log of every write, and a log of
every call, reads included (what a pass costs the API server).
It does not: validate schemas, default fields, run controllers or garbage-collect (e2e/ covers
the real apiserver); tests set child status with `set_status` to play the Deployment controller.
"""

from __future__ import annotations

import base64
import copy
import itertools
from datetime import datetime, timezone
from typing import Any

from .client import AlreadyExists, KubeError, NotFound, merge_patch

Key = tuple[str, str, str, str]  # (apiVersion, kind, namespace, name)


class MemoryKubeClient:
    """Store shared by any number of "operator instances" (pass the same object to each)."""

    def __init__(
        self,
        served: tuple[str, ...] = (
            "v1",
            "apps/v1",
            "policy/v1",
            "networking.k8s.io/v1",
            "lamina.dev/v1alpha1",
        ),  # fmt: skip
    ):
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name), in order
        # Every API call, reads and discovery included: (verb, kind or apiVersion, name or "").
        self.calls: list[tuple[str, str, str]] = []
        self.served = set(served)
        self._counter = itertools.count(1)

    # -- KubeClient ---------------------------------------------------------------------------
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        self.calls.append(("get", kind, name))
        obj = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, api_version: str, kind: str, namespace: str, labels: dict[str, str]
    ) -> list[dict]:
        self.calls.append(("list", kind, ""))
        out = []
        for (av, k, ns, _), obj in sorted(self.objects.items()):
            have = obj["metadata"].get("labels", {})
            if (av, k, ns) == (api_version, kind, namespace) and all(
                have.get(key) == value for key, value in labels.items()
            ):
                out.append(copy.deepcopy(obj))
        return out

    def create(self, obj: dict[str, Any]) -> dict:
        meta = obj["metadata"]
        self.calls.append(("create", obj["kind"], meta["name"]))
        key = (obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        if obj["apiVersion"] not in self.served:
            raise KubeError(404, f"the server does not serve {obj['apiVersion']}")
        if key in self.objects:
            raise AlreadyExists(f'{obj["kind"]} "{meta["name"]}" already exists')
        stored = copy.deepcopy(obj)
        if stored["kind"] == "Secret" and "stringData" in stored:
            data = stored.setdefault("data", {})
            for k, v in stored.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        n = next(self._counter)
        stored["metadata"].update(
            uid=f"uid-{n:06d}",
            resourceVersion=str(n),
            generation=1,
            creationTimestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        self.objects[key] = stored
        self.writes.append(("create", obj["kind"], meta["name"]))
        return copy.deepcopy(stored)

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        subresource: str | None = None,
    ) -> dict:
        self.calls.append(("patch/status" if subresource else "patch", kind, name))
        key = (api_version, kind, namespace, name)
        if key not in self.objects:
            raise NotFound(f'{kind} "{name}" not found')
        current = self.objects[key]
        if subresource == "status":
            updated = copy.deepcopy(current)
            updated["status"] = merge_patch(current.get("status", {}), patch.get("status", {}))
        else:
            updated = merge_patch(current, {k: v for k, v in patch.items() if k != "status"})
            if updated.get("spec") != current.get("spec"):
                updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
        for field in ("uid", "creationTimestamp"):
            updated["metadata"][field] = current["metadata"][field]
        updated["metadata"]["resourceVersion"] = str(next(self._counter))
        self.objects[key] = updated
        self.writes.append(("patch/status" if subresource else "patch", kind, name))
        return copy.deepcopy(updated)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind, name))
        if self.objects.pop((api_version, kind, namespace, name), None) is not None:
            self.writes.append(("delete", kind, name))

    def serves(self, api_version: str) -> bool:
        self.calls.append(("discover", api_version, ""))
        return api_version in self.served

    # -- test helpers -------------------------------------------------------------------------
    def set_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict):
        """Play a controller: replace an object's status without logging a write."""
        self.objects[(api_version, kind, namespace, name)]["status"] = copy.deepcopy(status)

    def kinds(self, namespace: str) -> list[tuple[str, str]]:
        """(kind, name) of every object in a namespace, sorted."""
        return sorted((k, n) for (_, k, ns, n) in self.objects if ns == namespace)
