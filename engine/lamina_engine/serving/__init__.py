"""Serving: OpenAI-compatible HTTP servers for the engine roles and the router (docs/design.md §3.6, §4).

config.py           ServeConfig from `lamina serve` flags and LAMINA_* variables
protocol.py         OpenAI request bodies and errors
responses.py        OpenAI response bodies and SSE chunks
openai_app.py       the public app both servers start from: shared routes, OpenAI errors
internal_app.py     the internal-port app: /v1/internal/* (engine pods), /v1/admin/drain
auth.py             Authorization: Bearer checks (api_key public, internal_key internal)
kv_handles.py       KV handles the router mints (HMAC over request, prompt, model); id bounds
listeners.py        a server's public and internal ports: two uvicorn servers, one loop
prepared_request.py a request parsed, tokenized and validated once (router -> pods)
engine_commands.py  typed commands from the asyncio handlers to the engine thread
async_engine.py     AsyncEngine: the engine loop on a thread, asyncio token streams
engine_server.py    EngineServer: the FastAPI app of a unified, prefill or decode pod
prefill_shipper.py  prefill side: run a prompt, put its KV groups as they are computed
shipped_kv.py       prefill side: KV published that no decode pod has read yet (drain)
kv_loading.py       decode side: load each received KV group as it arrives, or recompute
kv_shipping.py      prompt KV from prefill to decode over a KVTransport (both sides)
kv_progress.py      the prefill's progress notices; the decode side's verdict on lost KV
pod_pickers.py      which prefill and decode pod serve a request: FLOPs, decaying load
backends.py         the router's pod discovery and health polling
router_server.py    RouterServer: the front door (HTTP app)
metrics.py          Prometheus metrics (lamina_*); engine_metrics.py those read from the Engine
cli.py              `lamina serve`: build a role's server, run its ports, drain on SIGTERM
commands.py         argparse registration of `serve` and `up`
"""
