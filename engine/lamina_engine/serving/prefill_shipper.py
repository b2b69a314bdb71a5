"""PrefillShipper (prefill role): run a prompt, ship its KV group by group as it is computed.

The engine thread hands over each layer group's KV (CPU tensor) the moment it exists, through
`ship`; each becomes a put on the event loop while the engine goes on with the next group. The
request's answer waits for every put, and reports the exposed transfer time: from the last
group computed to the last put done (docs/design.md §3.7: about 1/G of the whole transfer).
Meanwhile the request's progress notice (serving/kv_progress.py) tells the decode pod that
this prefill is alive and how many groups it has put.
"""

from __future__ import annotations

import asyncio
import time

import torch

from lamina_engine.request_output import RequestOutput
from lamina_engine.sampling_params import SamplingParams
from lamina_engine.serving import kv_shipping
from lamina_engine.serving.async_engine import AsyncEngine, RequestFailed
from lamina_engine.serving.kv_progress import ProgressNotices
from lamina_engine.serving.metrics import ServerMetrics
from lamina_engine.serving.protocol import OpenAIError
from lamina_engine.transfer import KVTransferError, KVTransport

PREFIX = "prefill-"  # engine request id = PREFIX + the router's KV handle


class PrefillShipper:
    def __init__(
        self, transport: KVTransport, metrics: ServerMetrics, num_kv_heads: int, head_dim: int
    ) -> None:
        self.transport, self.metrics = transport, metrics
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.loop = asyncio.get_running_loop()
        self._puts: dict[str, list[asyncio.Future]] = {}  # engine request id -> its puts
        self._notices: dict[str, ProgressNotices] = {}  # engine request id -> its notice

    def ship(self, rid: str, group: int, layer_start: int, kv: torch.Tensor, first_token) -> None:
        """Called on the engine thread; the put starts on the event loop."""
        self.loop.call_soon_threadsafe(self._start_put, rid, group, layer_start, kv, first_token)

    def _start_put(self, rid, group, layer_start, kv, first_token) -> None:
        puts = self._puts.get(rid)
        if puts is not None:  # else the request is gone: its KV is not wanted
            puts.append(asyncio.ensure_future(self._put(rid, group, layer_start, kv, first_token)))

    async def _put(self, rid, group, layer_start, kv, first_token) -> tuple[int, float, float]:
        start = time.perf_counter()
        nbytes = await kv_shipping.publish_group(
            self.transport, rid.removeprefix(PREFIX), group, layer_start, kv, first_token,
            self.num_kv_heads, self.head_dim,
        )  # fmt: skip
        end = time.perf_counter()
        notices = self._notices.get(rid)
        if notices is not None:
            notices.put_done(group)
        self.metrics.kv_group_bytes.labels(self.metrics.role, str(group)).inc(nbytes)
        return nbytes, end - start, end

    async def run(
        self, ae: AsyncEngine, handle: str, ids: list[int], params: SamplingParams
    ) -> dict:
        """Prefill `ids` (params with max_tokens=1) and ship the KV under `handle`."""
        rid = PREFIX + handle
        puts: list[asyncio.Future] = []
        self._puts[rid] = puts
        notices = self._notices[rid] = ProgressNotices(self.transport, handle)
        out = RequestOutput(rid, None, ids)
        results: list = []
        try:
            await notices.start()
            async for delta in ae.generate(rid, ids, params):
                out.add(delta)
            computed = time.perf_counter()
            results = await asyncio.gather(*puts, return_exceptions=True)
        except RequestFailed as exc:
            raise OpenAIError(400 if exc.invalid else 500, str(exc)) from None
        finally:
            self._puts.pop(rid, None)
            self._notices.pop(rid, None)
            ok = bool(results) and not any(isinstance(r, BaseException) for r in results)
            await notices.finish(ok)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            kind = "kv_transfer_error" if isinstance(failed[0], KVTransferError) else "server_error"
            raise OpenAIError(502, f"publishing KV failed: {failed[0]}", kind)
        if not results:
            raise OpenAIError(500, f"prefill of {handle} ended without KV ({out.finish_reason})")
        nbytes = sum(r[0] for r in results)
        transfer = sum(r[1] for r in results)
        exposed = max(0.0, max(r[2] for r in results) - computed)
        role = self.metrics.role
        self.metrics.kv_bytes.labels(role, "publish").inc(nbytes)
        self.metrics.kv_seconds.labels(role, "publish").observe(transfer)
        self.metrics.kv_exposed.labels(role, "publish").observe(exposed)
        return {
            "request_id": handle,
            "first_token": out.token_ids[0],
            "prompt_tokens": len(ids),
            "kv_groups": len(results),
            "kv_bytes": nbytes,
            "transfer_seconds": transfer,
            "exposed_seconds": exposed,
        }
