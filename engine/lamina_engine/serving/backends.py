"""The router's view of its engine pods: discovery and health polling.

A service spec is a comma-separated list of entries, each one of
    HOST:PORT        every address HOST resolves to (a headless Service lists each pod), or
                     HOST itself if it does not resolve (re-resolved at every poll)
    file:/path       a file the operator rewrites: HOST:PORT entries, one a line or a JSON list
The addresses are the pods' internal ports (their /v1/internal/* endpoints live there only),
called with the deployment's internal key (`headers`).
Every `poll_s` seconds each pod's GET /v1/internal/load gives its role, readiness, draining flag,
KV utilisation and batch; a pod that does not answer in time is not ready until it does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

import httpx

from lamina_engine.serving.pod_pickers import BackendState

log = logging.getLogger(__name__)


def _file_entries(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        log.warning("backend file %s unreadable: %s", path, exc)
        return []
    text = text.strip()
    if text.startswith("["):
        try:
            return [str(x) for x in json.loads(text)]
        except ValueError:
            log.warning("backend file %s is not a JSON list of HOST:PORT", path)
            return []
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def _split(entry: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(
            f"backend {entry!r} must be HOST:PORT, a pod's internal port (lamina-decode:8001)"
        )
    return host.strip("[]"), int(port)


async def resolve(spec: str | None) -> list[str]:
    """Addresses (host:port) a spec stands for now, in a stable order."""
    if not spec:
        return []
    entries: list[str] = []
    for item in (x.strip() for x in spec.split(",")):
        if item.startswith("file:"):
            entries.extend(_file_entries(item[len("file:") :]))
        elif item:
            entries.append(item)
    loop = asyncio.get_running_loop()
    out: list[str] = []
    for entry in entries:
        host, port = _split(entry)
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addrs = sorted({i[4][0] for i in infos})
        except OSError:
            addrs = []
        if not addrs or host in ("localhost",) or host.replace(".", "").isdigit():
            addrs = [host]  # keep the name: a literal, or one that may resolve later
        out.extend(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addrs)
    return list(dict.fromkeys(out))


class BackendPool:
    """All known pods, refreshed in the background while the router runs."""

    def __init__(
        self,
        prefill_spec: str | None,
        decode_spec: str | None,
        poll_s: float,
        decay_s: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        for spec in (prefill_spec, decode_spec):
            for item in (spec or "").split(","):
                if item.strip() and not item.strip().startswith("file:"):
                    _split(item.strip())  # reject a malformed static entry at startup
        self.specs = {"prefill": prefill_spec, "decode": decode_spec}
        self.poll_s, self.decay_s = poll_s, decay_s
        self.pods: dict[tuple[str, str], BackendState] = {}  # (service, address) -> state
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(max(0.5, poll_s), connect=0.5), headers=headers
        )
        self._task: asyncio.Task | None = None
        self.polled = asyncio.Event()
        self._warned: set[str] = set()  # addresses warned about a 401/404

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # never let discovery die; the next poll retries
                log.exception("backend refresh failed")
            self.polled.set()
            await asyncio.sleep(self.poll_s)

    async def refresh(self) -> None:
        seen = set()
        for service, spec in self.specs.items():
            for address in await resolve(spec):
                key = (service, address)
                seen.add(key)
                if key not in self.pods:
                    self.pods[key] = BackendState(address, service, self.decay_s)
        for key in [k for k in self.pods if k not in seen]:
            del self.pods[key]
        await asyncio.gather(*(self._poll(p) for p in list(self.pods.values())))

    async def _poll(self, pod: BackendState) -> None:
        try:
            r = await self._client.get(f"{pod.url}/v1/internal/load")
            body = r.json() if r.status_code == 200 else {}
            if r.status_code in (401, 404) and pod.address not in self._warned:
                self._warned.add(pod.address)  # once per pod: every poll would repeat it
                log.warning(
                    "backend %s answers /v1/internal/load with %s: is it the pod's internal "
                    "port, and do the router and the pods share LAMINA_INTERNAL_KEY?",
                    pod.address, r.status_code,
                )  # fmt: skip
        except (httpx.HTTPError, ValueError):
            body = {}
        pod.ready = bool(body.get("ready"))
        pod.draining = bool(body.get("draining"))
        pod.role = body.get("role", pod.role)
        pod.kv_usage = float(body.get("kv_usage", pod.kv_usage))
        pod.running = int(body.get("running", pod.running))
        pod.waiting = int(body.get("waiting", pod.waiting))

    def available(self, role: str) -> list[BackendState]:
        """Ready, non-draining pods reporting `role` (each address once)."""
        found: dict[str, BackendState] = {}
        for pod in self.pods.values():
            if pod.available and pod.role == role:
                found.setdefault(pod.address, pod)
        return list(found.values())

    def mark_down(self, pod: BackendState) -> None:
        """A request to `pod` failed to connect: skip it until its next poll says otherwise."""
        pod.ready = False
