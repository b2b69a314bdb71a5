"""NixlKVTransport: KV blobs pulled with a NIXL READ (RDMA where the NIC has it, else UCX).

Pull model. The prefill side (`listen=(host, port)`) copies each group's blob into one staging
buffer registered with its NIXL agent at start (nixl_staging.py) and announces it; the decode
side (`peer=(host, port)`) learns where the blob lies and READs it into its own registered
memory, so the bytes never pass through a store. A small side channel carries everything else:
a TCP socket on the prefill side speaking one JSON line per connection (request, reply, close):

    {"op": "hello"}                        -> {"agent", "metadata" (base64), "base" (address)}
    {"op": "wait", "request_id", "group", "timeout"}
                                           -> {"status": "ok", "offset", "nbytes", "last",
                                               "first_token"} | {"status": "timeout"|"missing"}
    {"op": "ready", "request_id"}          -> {"entries": [[group, nbytes, last, first_token]]}
    {"op": "delete", "request_id"}         -> {"status": "ok"}   (frees the staging ranges)

A decode transport reads from the one prefill peer it was given (the pair topology). Blobs
expire after `ttl_s` like Redis keys; readiness records after 2 x ttl_s, so an expired blob
reads KVMissing, not KVTimeout. A range freed while a READ is in flight is caught by the blob
checksum on decode (KVCorrupt). Needs `nixl-cu12` (the `rdma` extra).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid

import numpy as np

from lamina_engine.transfer.base import (
    KVReadiness,
    KVTransport,
    ReadyEntry,
    check_deadline,
    check_first_token,
    check_group,
    check_request_id,
)
from lamina_engine.transfer.errors import KVMissing, KVTimeout, KVTransportError
from lamina_engine.transfer.nixl_source import LINE_LIMIT, NixlSource
from lamina_engine.transfer.nixl_staging import StagingBuffer, StagingFull

try:
    from nixl_cu12 import nixl_agent, nixl_agent_config
except ImportError:  # pragma: no cover - depends on the installed wheel
    try:
        from nixl import nixl_agent, nixl_agent_config
    except ImportError:
        nixl_agent = nixl_agent_config = None

_GRACE_S = 2.0  # how much longer than its deadline a decode waits for the prefill's reply
_POLL_S = 0.0002  # seconds between checks of a READ in flight


def _parse_addr(addr: tuple[str, int] | str) -> tuple[str, int]:
    if isinstance(addr, str):
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address {addr!r} must be host:port, e.g. 10.0.0.5:5601")
        return host, int(port)
    return addr[0], int(addr[1])


class NixlKVTransport(KVTransport):
    """KVTransport over NIXL. `listen` makes it a source (prefill), `peer` a reader (decode).
    `staging_bytes`: a source's send buffer (puts past it raise) and a reader's receive buffer
    (READs past it register memory of their own, slower), each registered once."""

    def __init__(
        self,
        deployment: str,
        *,
        listen: tuple[str, int] | str | None = None,
        peer: tuple[str, int] | str | None = None,
        staging_bytes: int = 256 << 20,
        ttl_s: float = 120.0,
        key_prefix: str = "lamina",
    ) -> None:
        super().__init__(deployment, key_prefix)
        if nixl_agent is None:
            raise RuntimeError(
                "LAMINA_KV_BACKEND=nixl needs the NIXL Python package: pip install "
                "'lamina[rdma]' (or pip install --no-deps nixl-cu12 on a CPU-torch image)"
            )
        if listen is None and peer is None:
            raise ValueError("NixlKVTransport needs listen= (prefill side) or peer= (decode)")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s={ttl_s} must be > 0 seconds")
        self.ttl_s = ttl_s
        self.peer = None if peer is None else _parse_addr(peer)
        name = f"lamina-{deployment}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._agent = nixl_agent(name, nixl_agent_config(backends=["UCX"]))
        self._remote: tuple[str, int] | None = None  # (agent name, staging base address)
        self._closed = False
        self._hello_lock: asyncio.Lock | None = None  # one hello even under concurrent waits
        if peer is not None:  # READs land here (registered once), then are copied out
            self._recv = StagingBuffer(staging_bytes)
            buf = self._recv
            self._recv_reg = self._agent.register_memory(
                [(buf.address, buf.capacity, 0, "")], "DRAM"
            )
            try:  # keep a reference: the loop holds tasks only weakly
                self._warm_task = asyncio.get_running_loop().create_task(self._warm())
            except RuntimeError:
                self._warm_task = None  # no loop yet: the first wait says hello
        self.source: NixlSource | None = None
        if listen is not None:
            self.source = NixlSource(self._agent, _parse_addr(listen), staging_bytes, ttl_s)
            self.address = self.source.address
            try:  # keep a reference: the loop holds tasks only weakly
                self._serve_task = asyncio.get_running_loop().create_task(self.source.serve())
            except RuntimeError:
                pass  # no loop yet: the first put starts serving

    async def put(self, request_id, group, blob, *, last=False, first_token=None) -> None:
        self._check_open()
        source = self.source
        if source is None:
            raise RuntimeError("this NixlKVTransport has no listen= address: it cannot put")
        check_request_id(request_id)
        check_group(group)
        check_first_token(first_token)
        await source.serve()
        start = time.perf_counter()
        view = memoryview(blob).cast("B")
        source.purge(time.monotonic())
        try:
            offset = source.staging.alloc(len(view))
        except StagingFull as error:
            failure = KVTransportError(
                f"NIXL staging buffer full for request {request_id!r} group {group}: {error}; "
                "raise staging_bytes or lower the KV TTL"
            )
            self.stats.record_failure(failure)
            raise failure from error
        try:
            await asyncio.to_thread(source.staging.write, offset, view)
        except BaseException:  # failed or cancelled mid-copy: the range was never announced
            source.staging.free(offset)
            raise
        entry = ReadyEntry(group, 1, len(view), bool(last), first_token)
        await source.store(request_id, group, offset, entry)
        self.stats.record_put(len(view), 1, time.perf_counter() - start)

    # ---- decode side --------------------------------------------------------------------
    async def _ask(self, msg: dict, timeout_s: float) -> dict:
        if self.peer is None:
            raise RuntimeError("this NixlKVTransport has no peer= address: it cannot read")
        host, port = self.peer
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(host, port, limit=LINE_LIMIT)
                try:
                    writer.write(json.dumps(msg).encode() + b"\n")
                    line = await reader.readline()
                finally:
                    writer.close()
            reply = json.loads(line)
        except (OSError, ValueError, TimeoutError) as error:
            raise KVTransportError(
                f"NIXL side channel to prefill peer {host}:{port} failed on {msg['op']!r}: "
                f"{error!r}; is the prefill pod up and its LAMINA_NIXL_LISTEN port reachable?"
            ) from error
        if reply.get("status") == "error":
            raise KVTransportError(f"NIXL peer {host}:{port} refused: {reply.get('error')}")
        return reply

    async def _connect(self, timeout_s: float) -> tuple[str, int]:
        if self._hello_lock is None:
            self._hello_lock = asyncio.Lock()
        async with self._hello_lock:
            if self._remote is None:
                hello = await self._ask({"op": "hello"}, timeout_s)
                name = self._agent.add_remote_agent(base64.b64decode(hello["metadata"]))
                # starts the UCX endpoint wire-up in the background: a first READ that has to
                # do it itself took ~0.9 s here, ~60 ms after it
                self._agent.make_connection(name)
                self._remote = (name, int(hello["base"]))
        return self._remote

    async def _warm(self) -> None:
        """Say hello as soon as the decode server starts, so the first request's READ finds
        the connection up; a prefill that is not up yet is retried by the first wait."""
        try:
            await self._connect(5.0)
        except KVTransportError:
            pass

    def _dest(self, nbytes: int) -> tuple[int, int | None, object]:
        """Where a READ of `nbytes` lands: (address, offset in the registered receive buffer
        or None, owner). A blob that does not fit the buffer gets its own registration."""
        try:
            offset = self._recv.alloc(nbytes)
            return self._recv.address + offset, offset, None
        except StagingFull:
            dst = np.empty(nbytes, dtype=np.uint8)
            address = int(dst.ctypes.data)
            reg = self._agent.register_memory([(address, nbytes, 0, "")], "DRAM")
            return address, None, (dst, reg)

    async def wait_group(self, request_id: str, group: int, deadline_s: float) -> bytes:
        self._check_open()
        check_request_id(request_id)
        check_group(group)
        check_deadline(deadline_s)
        start = time.perf_counter()
        try:
            name, base = await self._connect(deadline_s + _GRACE_S)
            left = max(0.0, deadline_s - (time.perf_counter() - start))
            msg = {"op": "wait", "request_id": request_id, "group": group, "timeout": left}
            reply = await self._ask(msg, left + _GRACE_S)
            if reply["status"] != "ok":
                where = f"KV group {group} of request {request_id!r} from NIXL peer {self.peer}"
                if reply["status"] == "missing":
                    raise KVMissing(f"{where} was announced but its blob expired or was deleted")
                raise KVTimeout(f"{where} did not arrive within {deadline_s:.3f} s")
            blob = await self._pull(name, base + reply["offset"], reply["nbytes"], request_id)
        except (KVMissing, KVTimeout, KVTransportError) as error:
            self.stats.record_failure(error)
            raise
        self.stats.record_get(len(blob), 1, time.perf_counter() - start)
        return blob

    async def _pull(self, name: str, address: int, nbytes: int, request_id: str) -> bytes:
        dest, offset, own = self._dest(nbytes)
        try:
            try:
                local = self._agent.get_xfer_descs([(dest, nbytes, 0)], "DRAM")
                remote = self._agent.get_xfer_descs([(address, nbytes, 0)], "DRAM")
                handle = self._agent.initialize_xfer("READ", local, remote, name)
                try:
                    state = self._agent.transfer(handle)
                    while state == "PROC":
                        await asyncio.sleep(_POLL_S)
                        state = self._agent.check_xfer_state(handle)
                finally:
                    handle.release()
            except Exception as error:  # the bindings raise their own types (nixlNotFoundError,
                # nixlBackendError, ...): the caller must see a KVTransferError and recompute
                state = f"ERR ({error!r})"
            if state != "DONE":
                self._remote = None  # the peer may have restarted: say hello again next time
                raise KVTransportError(
                    f"NIXL READ of {nbytes} bytes for request {request_id!r} from {self.peer} "
                    f"ended in state {state}"
                )
            if own is not None:
                return own[0].tobytes()
            return self._recv.array[offset : offset + nbytes].tobytes()
        finally:
            if own is not None:
                self._agent.deregister_memory(own[1])
            else:
                self._recv.free(offset)

    async def groups_ready(self, request_id: str) -> KVReadiness:
        self._check_open()
        check_request_id(request_id)
        if self.peer is None:
            return KVReadiness.from_entries(self.source.entries(request_id))
        reply = await self._ask({"op": "ready", "request_id": request_id}, 5.0)
        entries = [ReadyEntry(g, 1, n, last, tok) for g, n, last, tok in reply["entries"]]
        return KVReadiness.from_entries(entries)

    async def delete(self, request_id: str) -> None:
        self._check_open()
        check_request_id(request_id)
        if self.peer is None:
            self.source.drop(request_id)
        else:
            await self._ask({"op": "delete", "request_id": request_id}, 5.0)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("NixlKVTransport is closed; create a new one")

    async def close(self) -> None:
        """Stop serving, drop the peer and the registrations (explicitly: NIXL may crash at
        interpreter exit if they are left to garbage collection)."""
        if self._closed:
            return
        self._closed = True
        if self.peer is not None and self._warm_task is not None:
            self._warm_task.cancel()
        if self.source is not None:
            await self.source.close()
        if self._remote is not None:
            self._agent.remove_remote_agent(self._remote[0])
        if self.peer is not None:
            self._agent.deregister_memory(self._recv_reg)
        self._agent = None
