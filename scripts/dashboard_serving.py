"""The Lamina serving dashboard's panels: requests, latency against the SLO, queues, decode and
KV cache, KV transfer, layered prefill and SPEED."""

from __future__ import annotations

from dashboard_panels import ENGINES, RI, SEL, Panel, Row, _quantiles, _t

ROUTER = f'{SEL}, role="router"'
API = f'{ROUTER}, route=~"/v1/.*"'
INFO = f"on (instance) group_left (policy) lamina_engine_info{{{SEL}}}"

SERVING: list[Row] = [
    Row(
        "Requests",
        [
            Panel(
                "Request rate by status code",
                (
                    _t(
                        f"sum by (code) (rate(lamina_http_requests_total{{{API}}}[{RI}]))",
                        "{{code}}",
                    ),
                ),
                "reqps",
                "OpenAI API responses of the router, by HTTP status.",
            ),
            Panel(
                "Errors by status code",
                (
                    _t(
                        f'sum by (code) (rate(lamina_http_requests_total{{{API}, code!~"2.."}}[{RI}]))',
                        "{{code}}",
                    ),
                ),
                "reqps",
                "4xx: the client's request (unknown model, bad parameters); 5xx: no "
                "backend ready, backend unreachable, engine failure.",
            ),
            Panel(
                "Server error ratio",
                (
                    _t(
                        f'(sum(rate(lamina_http_requests_total{{{API}, code=~"5.."}}[{RI}])) or vector(0))'
                        f" / sum(rate(lamina_http_requests_total{{{API}}}[{RI}]))",
                        "5xx / all",
                    ),
                ),
                "percentunit",
                kind="stat",
            ),
            Panel(
                "Finished requests by reason",
                (
                    _t(
                        f"sum by (role, reason) (rate(lamina_requests_total{{{SEL}}}[{RI}]))",
                        "{{role}} {{reason}}",
                    ),
                ),
                "reqps",
                "stop, length, abort (client left), error.",
            ),
            Panel(
                "Disaggregated vs local prefill",
                (
                    _t(
                        f"sum by (path) (rate(lamina_router_requests_total{{{ROUTER}}}[{RI}]))",
                        "{{path}}",
                    ),
                ),
                "reqps",
                "disagg: a prefill pod computes the prompt and ships its KV; direct: the "
                "decode pod computes it (short prompt, logprobs, or no prefill pod ready).",
            ),
            Panel(
                "Ready backends",
                (_t(f"sum by (kind) (lamina_router_backends_ready{{{ROUTER}}})", "{{kind}}"),),
                "short",
            ),
        ],
    ),
    Row(
        "Latency against the SLO",
        [
            Panel(
                "TTFT (router)",
                _quantiles("lamina_request_ttft_seconds", ROUTER)
                + (_t("vector($ttft_slo)", "SLO"),),
                "s",
                "Time to first token of streamed requests, "
                "as clients see it. The SLO line is the dashboard's ttft_slo variable.",
            ),
            Panel(
                "TBT (router)",
                _quantiles("lamina_request_tbt_seconds", ROUTER) + (_t("vector($tbt_slo)", "SLO"),),
                "s",
                "Time between streamed tokens.",
            ),
            Panel(
                "End-to-end latency (router)", _quantiles("lamina_request_e2e_seconds", ROUTER), "s"
            ),
            Panel(
                "Queue time by pool",
                _quantiles("lamina_request_queue_seconds", f"{SEL}, {ENGINES}", "role"),
                "s",
                "Arrival to first scheduled step.",
            ),
            Panel(
                "Prompt length",
                _quantiles("lamina_request_prompt_tokens", f'{SEL}, role=~"decode|unified"'),
                "short",
            ),
            Panel(
                "Output length",
                _quantiles("lamina_request_generation_tokens", f'{SEL}, role=~"decode|unified"'),
                "short",
            ),
        ],
    ),
    Row(
        "Queues and prefill",
        [
            Panel(
                "Waiting requests by pool",
                (_t(f"sum by (role) (lamina_queue_depth{{{SEL}}})", "{{role}}"),),
                "short",
            ),
            Panel(
                "Router: open requests per backend kind",
                (_t(f"sum by (kind) (lamina_router_in_flight_requests{{{ROUTER}}})", "{{kind}}"),),
                "short",
                "Requests the router is waiting on, per backend kind: its queue.",
            ),
            Panel(
                "Prefill queue (tokens)",
                (
                    _t(
                        f'sum by (role) (lamina_prefill_queue_tokens{{{SEL}, role=~"prefill|unified"}})',
                        "{{role}}",
                    ),
                ),
                "short",
                "Prompt tokens not computed yet: the prefill pool's backlog.",
            ),
            Panel(
                "Prefill step time",
                _quantiles("lamina_engine_step_seconds", f'{SEL}, kind="prefill"', "role"),
                "s",
            ),
            Panel(
                "Decode step time",
                _quantiles("lamina_engine_step_seconds", f'{SEL}, kind="decode"', "role"),
                "s",
            ),
            Panel(
                "Tokens per second",
                (
                    _t(
                        f"sum by (role) (rate(lamina_prefill_tokens_total{{{SEL}}}[{RI}]))",
                        "prefill {{role}}",
                    ),
                    _t(
                        f"sum by (role) (rate(lamina_decode_tokens_total{{{SEL}}}[{RI}]))",
                        "decode {{role}}",
                    ),
                ),
                "short",
            ),
        ],
    ),
    Row(
        "Decode and KV cache",
        [
            Panel(
                "Running batch by pool",
                (_t(f"sum by (role) (lamina_running_batch_size{{{SEL}, {ENGINES}}})", "{{role}}"),),
                "short",
            ),
            Panel(
                "KV-cache utilisation",
                (
                    _t(
                        f"max by (role) (lamina_kv_cache_utilization{{{SEL}, {ENGINES}}})",
                        "max {{role}}",
                    ),
                ),
                "percentunit",
                "Share of KV blocks in use on the fullest pod of each pool.",
            ),
            Panel(
                "KV blocks used / total",
                (
                    _t(f"sum by (role) (lamina_kv_cache_blocks_used{{{SEL}}})", "used {{role}}"),
                    _t(f"sum by (role) (lamina_kv_cache_blocks_total{{{SEL}}})", "total {{role}}"),
                ),
                "short",
            ),
            Panel(
                "Preemptions",
                (_t(f"sum by (role) (rate(lamina_preemptions_total{{{SEL}}}[{RI}]))", "{{role}}"),),
                "short",
                "Sequences whose KV was freed for lack of blocks (recomputed later).",
            ),
            Panel(
                "Prefix-cache hit rate",
                (
                    _t(
                        f"sum by (role) (rate(lamina_prefix_cache_hit_tokens_total{{{SEL}, "
                        f'role=~"prefill|unified"}}[{RI}])) / sum by (role) (rate('
                        f'lamina_request_prompt_tokens_sum{{{SEL}, role=~"prefill|unified"}}[{RI}]))',
                        "{{role}}",
                    ),
                ),
                "percentunit",
                "Prompt tokens served from the prefix cache over prompt tokens.",
            ),
        ],
    ),
    Row(
        "KV transfer (prefill to decode)",
        [
            Panel(
                "KV bytes per second",
                (
                    _t(
                        f"sum by (direction) (rate(lamina_kv_transfer_bytes_total{{{SEL}}}[{RI}]))",
                        "{{direction}}",
                    ),
                ),
                "Bps",
            ),
            Panel(
                "KV transfer time",
                _quantiles("lamina_kv_transfer_seconds", SEL, "direction"),
                "s",
                "Wall time to publish (prefill) or load (decode) one request's KV.",
            ),
            Panel(
                "KV transfer exposed time",
                _quantiles("lamina_kv_transfer_exposed_seconds", SEL, "direction"),
                "s",
                "What layer-group pipelining leaves on the critical path.",
            ),
            Panel(
                "KV failures and fallbacks by reason",
                (
                    _t(
                        f"sum by (reason) (rate(lamina_kv_fallback_total{{{SEL}}}[{RI}])) or on () vector(0)",
                        "{{reason}}",
                    ),
                ),
                "reqps",
                "Requests whose prompt the decode pod recomputed because the KV did not "
                "arrive intact (KVTimeout, KVCorrupt, PrefillFailed, ...).",
            ),
            Panel(
                "KV failure ratio",
                (
                    _t(
                        f"(sum(rate(lamina_kv_fallback_total{{{SEL}}}[{RI}])) or vector(0)) / "
                        f'sum(rate(lamina_router_requests_total{{{ROUTER}, path="disagg"}}[{RI}]))',
                        "fallbacks / disaggregated",
                    ),
                ),
                "percentunit",
                kind="stat",
            ),
        ],
    ),
    Row(
        "Lamina: layered prefill and SPEED",
        [
            Panel(
                "Expert weight bytes per token, by scheduling policy",
                (
                    _t(
                        f"sum by (policy) (rate(lamina_expert_weight_bytes_total{{{SEL}}}[{RI}]) * {INFO})"
                        f" / sum by (policy) ((rate(lamina_prefill_tokens_total{{{SEL}}}[{RI}]) + on "
                        f"(instance) rate(lamina_decode_tokens_total{{{SEL}}}[{RI}])) * {INFO})",
                        "{{policy}}",
                    ),
                ),
                "bytes",
                "Layered prefill reads each expert once per layer group for a whole cohort; "
                "chunked prefill once per chunk. Lower is better.",
            ),
            Panel(
                "Layer groups per cohort",
                (
                    _t(
                        f"sum(rate(lamina_layered_cohort_layer_groups_sum{{{SEL}}}[{RI}])) / "
                        f"sum(rate(lamina_layered_cohort_layer_groups_count{{{SEL}}}[{RI}]))",
                        "mean",
                    ),
                    _t(
                        f"histogram_quantile(0.9, sum by (le) (rate("
                        f"lamina_layered_cohort_layer_groups_bucket{{{SEL}}}[{RI}])))",
                        "p90",
                    ),
                ),
                "short",
                "Layered policy only: G of each finished cohort.",
            ),
            Panel(
                "SPEED: prompt token-layers",
                (
                    _t(f"sum(rate(lamina_prompt_token_layers_total{{{SEL}}}[{RI}]))", "computed"),
                    _t(
                        f"sum(rate(lamina_speed_skipped_token_layers_total{{{SEL}}}[{RI}]))",
                        "skipped",
                    ),
                ),
                "short",
                "Prompt tokens x layers run; SPEED runs prompt tokens through K of L layers.",
            ),
            Panel(
                "SPEED: KV bytes saved",
                (_t(f"sum(rate(lamina_speed_kv_bytes_saved_total{{{SEL}}}[{RI}]))", "saved"),),
                "Bps",
            ),
            Panel(
                "KV bytes shipped per layer group",
                (
                    _t(
                        f"sum by (group) (rate(lamina_kv_transfer_group_bytes_total{{{SEL}}}[{RI}]))",
                        "group {{group}}",
                    ),
                ),
                "Bps",
                "Each group ships as soon as it is computed; with SPEED the last group holds "
                "only the full-depth tokens of the upper layers.",
            ),
            Panel(
                "Pod restarts (kube-state-metrics)",
                (
                    _t(
                        "sum by (pod) (increase(kube_pod_container_status_restarts_total{namespace="
                        '"$namespace", pod=~"$deployment-.*"}[1h]))',
                        "{{pod}}",
                    ),
                ),
                "short",
                "Needs kube-state-metrics.",
            ),
        ],
    ),
]
