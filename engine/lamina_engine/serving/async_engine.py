"""AsyncEngine: the Engine's step loop on a background thread, token streams on asyncio.

    handler (event loop)                  engine thread
    generate() ------- Add ------> commands --> engine.add_request
    generate(kv=groups) -- Kv* -->            KVLoads (serving/kv_loading.py): reserve, load
                                              each group as it arrives, activate or recompute
    async for delta in stream  <-- delta --   engine.step() outputs (call_soon_threadsafe)
    stream closed early ----- Abort ------->  engine.abort (a KV reservation too)

The commands are the dataclasses of serving/engine_commands.py, dispatched by type.

Only the engine thread touches the Engine (its KV cache, scheduler and runner are not
thread-safe). Handlers get a RequestDelta each time a request changed: what is new since the
previous one (O(new tokens), never a copy of the whole output), built on the engine thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from lamina_engine.engine import Engine, InvalidRequest
from lamina_engine.request_output import RequestDelta, RequestOutput
from lamina_engine.sampling_params import SamplingParams
from lamina_engine.serving.engine_commands import (
    Abort,
    Add,
    EngineCommand,
    KvDone,
    KvFailed,
    KvGroup,
    KvReserve,
)
from lamina_engine.serving.kv_loading import KVLoads, Recompute
from lamina_engine.serving.kv_shipping import KVGroup
from lamina_engine.serving.metrics import ServerMetrics

log = logging.getLogger(__name__)


class RequestFailed(RuntimeError):
    """The engine could not serve a request (`invalid`: the client's fault, a 400)."""

    def __init__(self, message: str, invalid: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    last_tokens: int = 0  # output tokens sent, to time TBT per new token
    last_pieces: int = 0  # text pieces sent


class AsyncEngine:
    def __init__(self, engine: Engine, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.role = metrics.role
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.fallbacks: dict[str, int] = {}
        self.kv_loads = KVLoads(engine, metrics, self._post)  # decode role: KV as it arrives
        self._marks = (0, 0, 0)  # prefill tokens, decode tokens, expert bytes already counted
        self._thread = threading.Thread(target=self._run, name="lamina-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        """The engine thread runs (it exits only on shutdown or a bug that escaped a step)."""
        return self._thread.is_alive()

    @property
    def num_in_flight(self) -> int:
        with self._lock:
            return len(self._streams)

    # ------------------------------------------------------------------ handler side
    async def generate(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        kv: AsyncGenerator[KVGroup, None] | None = None,
        kv_cacheable: bool = True,
    ) -> AsyncIterator[RequestDelta]:
        """Yield what is new in the request's output each time it changes; the last delta is
        finished.
        With `kv` (the prompt's KV groups as they arrive; `prompt` is then token ids) the
        engine loads them and continues from the shipped first token, or recomputes the
        prompt if they fail; `kv_cacheable` False keeps that KV (and what decodes from it) out
        of the prefix cache. Leaving the iteration early (client gone) aborts the request."""
        if kv is not None and isinstance(prompt, str):
            raise TypeError("a request with shipped KV takes its prompt as token ids")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if request_id in self._streams:
                raise RequestFailed(f"request id {request_id!r} is already in flight", True)
            self._streams[request_id] = stream
        feeding = None
        if kv is None:
            self._post(Add(request_id, prompt, params))
        else:
            feeding = asyncio.ensure_future(
                self.kv_loads.feed(request_id, prompt, params, kv, kv_cacheable)
            )
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, RequestFailed):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if feeding is not None:
                feeding.cancel()  # done already, unless the prompt was recomputed meanwhile
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:
                self.metrics.requests.labels(self.role, "abort").inc()
                self._post(Abort(request_id))

    def _post(self, cmd: EngineCommand) -> None:
        """Queue a command for the engine thread (any thread) and wake it."""
        self._commands.put(cmd)
        self._wake.set()

    # ------------------------------------------------------------------ engine thread
    def _send(self, request_id: str, item: RequestFailed) -> None:
        with self._lock:
            stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = self.engine.has_unfinished()
            if not busy and self._commands.empty():
                self._wake.wait(0.5)
                self._wake.clear()
            self._apply_commands()
            if self.engine.has_unfinished():
                try:
                    result = self.engine.step()
                except Exception as exc:  # outside the batch (the scheduler): fail in flight
                    log.exception("engine step failed")
                    self._fail_all(f"engine step failed: {type(exc).__name__}: {exc}")
                    continue
                for out in result.outputs:
                    why = result.errors.get(out.request_id)
                    if why is None:
                        self._publish(out)
                    else:  # this request alone failed (Engine.step); its stream ends in error
                        self.metrics.requests.labels(self.role, "error").inc()
                        self._send(out.request_id, RequestFailed(why))
                if not result.ran:  # nothing could run (e.g. no free blocks)
                    self._wake.wait(0.005)
                    self._wake.clear()
            self._update_gauges()

    def _apply_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(cmd, Abort):
                self.engine.abort(cmd.request_id)
                self.kv_loads.forget(cmd.request_id)
                continue
            if isinstance(cmd, Add | KvReserve):
                with self._lock:
                    if cmd.request_id not in self._streams:  # the client left before now
                        continue
            try:
                result = self._apply(cmd)
            except InvalidRequest as exc:
                self._send(cmd.request_id, RequestFailed(str(exc), invalid=True))
                continue
            if isinstance(result, Recompute):
                self.count_fallback(result.reason)
                self._admit(result.request_id, result.ids, result.params)
            elif result is not None:  # active, with the first token the prefill sampled
                self._publish(result)

    def _apply(self, cmd: EngineCommand) -> RequestOutput | Recompute | None:
        match cmd:
            case Add():
                self._admit(cmd.request_id, cmd.prompt, cmd.params)
                return None
            case KvReserve():
                return self.kv_loads.reserve(cmd)
            case KvGroup():
                return self.kv_loads.load_group(cmd)
            case KvDone():
                return self.kv_loads.activate(cmd)
            case KvFailed():
                return self.kv_loads.fail(cmd)
        raise TypeError(f"unknown engine command {cmd!r}")

    def _admit(self, rid: str, prompt: str | list[int], params: SamplingParams) -> None:
        try:
            self.engine.add_request(rid, prompt, params)
        except InvalidRequest as exc:
            self._send(rid, RequestFailed(str(exc), invalid=True))

    def count_fallback(self, reason: str) -> None:
        self.metrics.kv_fallback.labels(self.role, reason).inc()
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1

    def _publish(self, out: RequestOutput) -> None:
        with self._lock:
            stream = self._streams.get(out.request_id)
        m, role = out.metrics, self.role
        if stream is not None and m is not None:
            times = m.token_times
            if stream.last_tokens == 0 and m.ttft is not None:
                self.metrics.ttft.labels(role).observe(m.ttft)
                if m.first_scheduled_time is not None:
                    self.metrics.queue_time.labels(role).observe(
                        max(0.0, m.first_scheduled_time - m.arrival_time)
                    )
            for a, b in zip(times[max(0, stream.last_tokens - 1) :], times[stream.last_tokens :]):
                self.metrics.tbt.labels(role).observe(b - a)
        if out.finished:
            self.metrics.requests.labels(role, out.finish_reason or "unknown").inc()
            self.metrics.finished(out)
            if m is not None and m.e2e is not None:
                self.metrics.e2e.labels(role).observe(m.e2e)
        if stream is None:  # the client left
            return
        delta = out.delta(stream.last_tokens, stream.last_pieces)
        stream.last_tokens, stream.last_pieces = len(out.token_ids), len(out.text_pieces)
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, delta)

    def _fail_all(self, message: str) -> None:
        with self._lock:
            ids = list(self._streams)
        for rid in ids:
            self.engine.abort(rid)
            self.kv_loads.forget(rid)
            self._send(rid, RequestFailed(message))

    def _update_gauges(self) -> None:
        sched, stats, role = self.engine.scheduler, self.engine.stats, self.role
        self.metrics.queue_depth.labels(role).set(sched.num_waiting + self._commands.qsize())
        self.metrics.running.labels(role).set(sched.num_running)
        self.metrics.kv_util.labels(role).set(sched.kv_usage)
        pre, dec, exp = self._marks
        self.metrics.prefill_tokens.labels(role).inc(stats.prefill_tokens - pre)
        self.metrics.decode_tokens.labels(role).inc(stats.decode_tokens - dec)
        self.metrics.expert_bytes.labels(role).inc(max(0, stats.expert_bytes_loaded - exp))
        self._marks = (stats.prefill_tokens, stats.decode_tokens, stats.expert_bytes_loaded)
        self.metrics.observe_engine(self.engine)

    def load(self) -> dict:
        """What the router reads to pick a decode pod (cheap; read without the engine lock)."""
        sched = self.engine.scheduler
        return {
            "kv_usage": sched.kv_usage,
            "running": sched.num_running,
            "waiting": sched.num_waiting + self._commands.qsize(),
            "in_flight": self.num_in_flight,
        }
