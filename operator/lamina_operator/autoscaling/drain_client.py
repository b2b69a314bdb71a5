"""The engine pods' drain endpoint, over HTTP: /v1/admin/drain on a pod's internal port.

    POST   -> start draining     GET -> how far     DELETE -> serve again
    each answers 200 {"draining": bool, "in_flight": N, "kv_pending": M}

Requests carry `Authorization: Bearer <internal key>` when the operator can derive the
deployment's key (builders/internal_key.py, from LAMINA_OPERATOR_KEY_SEED). Timeouts are short:
the autoscaler runs in kopf's handler thread pool, and a pod that does not answer in a few
seconds is treated as unreachable (the caller falls back or retries at its next look).
"""

from __future__ import annotations

from typing import Any

import httpx

from ..builders import internal_key as keys
from .drain import DrainReport

DRAIN_PATH = "/v1/admin/drain"
CONNECT_SECONDS = 1.0
READ_SECONDS = 3.0


class DrainError(Exception):
    """The pod's drain endpoint could not be used; the message says where and why."""


def internal_key(namespace: str, name: str, uid: str) -> str | None:
    """The ServingDeployment's internal key, derived as the pods get it; None when the operator
    has no seed (the pods then hold a random key the operator cannot know, so its drain calls
    get a 401 and scale-in falls back to SIGTERM with a DrainUnavailable Event)."""
    try:
        seed = keys.seed_from_env()
    except ValueError as exc:  # a seed too short to be secret: say so where it is used
        raise DrainError(str(exc)) from exc
    return keys.derive(seed, namespace, name, uid) if seed else None


def _report(body: Any, url: str) -> DrainReport:
    try:
        draining, in_flight, kv_pending = body["draining"], body["in_flight"], body["kv_pending"]
    except (KeyError, TypeError):
        raise DrainError(f"{url} answered {str(body)[:200]!r}, not the drain shape "
                         "{draining, in_flight, kv_pending}") from None  # fmt: skip
    if not isinstance(draining, bool) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (in_flight, kv_pending)
    ):
        raise DrainError(f"{url} answered {str(body)[:200]!r}: draining must be a bool, "
                         "in_flight and kv_pending counts")  # fmt: skip
    return DrainReport(draining, in_flight, kv_pending)


class DrainClient:
    """POST/GET/DELETE a pod's drain endpoint; every failure is a DrainError."""

    def __init__(self, connect: float = CONNECT_SECONDS, read: float = READ_SECONDS):
        self.http = httpx.Client(timeout=httpx.Timeout(read, connect=connect))

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, base_url: str, key: str | None) -> DrainReport:
        url = base_url.rstrip("/") + DRAIN_PATH
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = self.http.request(method, url, headers=headers)
        except httpx.HTTPError as exc:
            raise DrainError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 401 and key is None:
            raise DrainError(f"{method} {url}: 401, the pod wants the internal key and the "
                             f"operator has no {keys.SEED_ENV} to derive it from")  # fmt: skip
        if response.status_code == 401:
            raise DrainError(f"{method} {url}: 401, the pod refused the operator's internal key "
                             f"(is {keys.SEED_ENV} the seed the pods' key was derived "
                             "from?)")  # fmt: skip
        if response.status_code == 404:
            raise DrainError(f"{method} {url}: 404, this engine has no drain endpoint (an "
                             "image older than the operator?)")  # fmt: skip
        if response.status_code != 200:
            raise DrainError(f"{method} {url}: HTTP {response.status_code} "
                             f"{response.text[:200]!r}")  # fmt: skip
        try:
            body = response.json()
        except ValueError as exc:
            raise DrainError(f"{method} {url}: not JSON: {response.text[:200]!r}") from exc
        return _report(body, url)

    def start(self, base_url: str, key: str | None) -> DrainReport:
        return self.call("POST", base_url, key)

    def status(self, base_url: str, key: str | None) -> DrainReport:
        return self.call("GET", base_url, key)

    def cancel(self, base_url: str, key: str | None) -> DrainReport:
        return self.call("DELETE", base_url, key)
