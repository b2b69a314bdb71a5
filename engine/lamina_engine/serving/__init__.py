"""Serving: OpenAI-compatible HTTP servers for the engine roles and the router (docs/design.md §3.6, §4).

config.py         ServeConfig from `lamina serve` flags and LAMINA_* variables
protocol.py       OpenAI request bodies, errors, SamplingParams from a request
responses.py      OpenAI response bodies and SSE chunks
engine_server.py  AsyncEngine: the engine loop on a thread, asyncio token streams
app.py            EngineServer: the FastAPI app of a unified, prefill or decode pod
kv_shipping.py    prompt KV from prefill to decode over a KVTransport
routing.py        prefill/decode pickers, FLOPs estimate, decaying load
backends.py       the router's pod discovery and health polling
router.py         RouterServer: the front door
metrics.py        Prometheus metrics (lamina_*)
cli.py            `lamina serve`: build a role's server, run it under uvicorn, drain on SIGTERM
commands.py       argparse registration of `serve` and `up`
"""
