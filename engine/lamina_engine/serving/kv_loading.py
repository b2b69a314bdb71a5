"""KVLoads: a decode pod loads a prefilled request's KV group by group as it arrives.

docs/design.md §3.6 step 3. The handler side (event loop) turns the received groups into commands;
the engine thread, which alone touches the Engine, applies them between steps:

    handler: feed()                       engine thread (serving/engine_commands.py)
    KvReserve(rid, ids, params)     -->   reserve():    engine.reserve_prefilled  (blocks held)
    KvGroup(rid, layer_start, kv)   -->   load_group(): engine.load_prefilled_group (scattered)
    KvDone(rid, first_token, timing) ->   activate():   engine.activate_prefilled -> output
    KvFailed(rid, reason)           -->   fail():       release the blocks, recompute

So the earlier groups are in the cache before the last one lands, and what stays exposed
after it is that group's decode and scatter (`lamina_kv_transfer_exposed_seconds`). Every
failure (no free blocks, a group that does not fit, the transfer failing) ends in `Recompute`:
the AsyncEngine counts the fallback and admits the prompt normally; a client that leaves
aborts the request, which frees a reservation like any other request's blocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from lamina_engine.engine import Engine, InvalidRequest
from lamina_engine.request_output import RequestOutput
from lamina_engine.sampling_params import SamplingParams
from lamina_engine.serving.engine_commands import (
    KvDone,
    KvFailed,
    KvGroup,
    KvReserve,
    KvTiming,
)
from lamina_engine.serving.kv_shipping import KVGroup
from lamina_engine.serving.metrics import ServerMetrics
from lamina_engine.transfer import KVTransferError
from lamina_engine.transfer.errors import KVCorrupt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recompute:
    """The engine thread's answer when the shipped KV cannot be used: admit the prompt anew."""

    request_id: str
    ids: list[int]
    params: SamplingParams
    reason: str  # the lamina_kv_fallback_total label


class KVLoads:
    """Prefilled requests of one AsyncEngine whose KV is still coming in. `post(cmd)` queues
    a command for the engine thread (thread-safe)."""

    def __init__(self, engine: Engine, metrics: ServerMetrics, post: Callable) -> None:
        self.engine, self.metrics, self.post = engine, metrics, post
        # engine thread only: request id -> (ids, params), for a recompute after a failure
        self._loading: dict[str, tuple[list[int], SamplingParams]] = {}

    # ------------------------------------------------------------------ handler side
    async def feed(
        self,
        request_id: str,
        ids: list[int],
        params: SamplingParams,
        groups: AsyncGenerator[KVGroup, None],
        cacheable: bool = True,
    ) -> None:
        """Post the reservation, each group the moment it arrives, then the activation; a
        failure of the transfer posts kv_failed. Cancelled (the client left, or the request
        already ended on a recompute) it posts nothing: the stream's abort covers that."""
        started, nbytes = time.perf_counter(), 0
        self.post(KvReserve(request_id, ids, params, cacheable))
        try:
            async with aclosing(groups):
                async for group in groups:
                    nbytes += group.nbytes
                    self.post(KvGroup(request_id, group.layer_start, group.kv))
                    if group.last:
                        timing = KvTiming(started, group.arrived, nbytes)
                        self.post(KvDone(request_id, group.first_token, timing))
                        return
            raise KVCorrupt(f"the KV of {request_id!r} ended before its last group")
        except (KVTransferError, ValueError) as exc:
            log.warning("KV of %s unusable (%s); recomputing the prompt", request_id, exc)
            self.post(KvFailed(request_id, type(exc).__name__))
        except Exception as exc:  # a bug must not leave the request waiting forever
            log.exception("loading the KV of %s failed; recomputing the prompt", request_id)
            self.post(KvFailed(request_id, type(exc).__name__))

    # ------------------------------------------------------------------ engine thread
    def reserve(self, cmd: KvReserve) -> Recompute | None:
        """Hold blocks for the prompt; a Recompute when the shipped KV cannot be used here.
        InvalidRequest (the request itself is bad) propagates."""
        rid, ids, params = cmd.request_id, cmd.prompt_ids, cmd.params
        try:
            if self.engine.reserve_prefilled(rid, ids, params, cmd.cacheable):
                self._loading[rid] = (ids, params)
                return None
            return Recompute(rid, ids, params, "no_free_blocks")
        except InvalidRequest:
            raise
        except ValueError as exc:
            log.warning("request %s cannot use shipped KV (%s); recomputing", rid, exc)
            return Recompute(rid, ids, params, "kv_mismatch")

    def load_group(self, cmd: KvGroup) -> Recompute | None:
        if cmd.request_id not in self._loading:
            return None  # recomputing already, or aborted: this KV is not wanted
        try:
            self.engine.load_prefilled_group(cmd.request_id, cmd.layer_start, cmd.kv)
        except ValueError as exc:
            return self._unusable(cmd.request_id, exc)
        return None

    def activate(self, cmd: KvDone) -> RequestOutput | Recompute | None:
        """The request's first output once it is active (None when its KV is not wanted)."""
        if cmd.request_id not in self._loading:
            return None
        try:
            out = self.engine.activate_prefilled(cmd.request_id, cmd.first_token)
        except ValueError as exc:
            return self._unusable(cmd.request_id, exc)
        del self._loading[cmd.request_id]
        self._observe(cmd.timing)
        return out

    def fail(self, cmd: KvFailed) -> Recompute | None:
        if cmd.request_id not in self._loading:
            return None
        return self._recompute(cmd.request_id, cmd.reason)

    def forget(self, request_id: str) -> None:
        """The request was aborted (Engine.abort freed its reservation): ignore its KV."""
        self._loading.pop(request_id, None)

    def _unusable(self, rid: str, exc: ValueError) -> Recompute:
        log.warning("request %s: received KV unusable (%s); recomputing", rid, exc)
        return self._recompute(rid, "kv_mismatch")

    def _recompute(self, rid: str, reason: str) -> Recompute:
        ids, params = self._loading.pop(rid)
        self.engine.release_prefilled(rid)
        return Recompute(rid, ids, params, reason)

    def _observe(self, timing: KvTiming) -> None:
        now, role = time.perf_counter(), self.metrics.role
        self.metrics.kv_bytes.labels(role, "load").inc(timing.nbytes)
        self.metrics.kv_seconds.labels(role, "load").observe(now - timing.started)
        self.metrics.kv_exposed.labels(role, "load").observe(now - timing.arrived)
