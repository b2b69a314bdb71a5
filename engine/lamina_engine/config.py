"""EngineConfig: every engine setting, validated once and passed whole.

Each field is also a flag and a LAMINA_* variable of `lamina generate` / `lamina serve`
(flags.py derives them: `max_num_seqs` -> `--max-num-seqs`, `LAMINA_MAX_NUM_SEQS`), so a new
setting is one field here. The operator writes these names, and
tests/test_operator_engine_contract.py holds it to them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lamina_engine.speed_config import SpeedConfig

DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
Kernels = Literal["auto", "triton", "torch"]  # lamina_engine.kernels.KERNEL_MODES
# The keys of core.scheduler.POLICIES (tests/engine/test_cli.py keeps the two equal).
SchedulingPolicy = Literal["chunked", "layered"]


class EngineConfig(BaseModel):
    """Settings of one engine instance (vLLM's names where vLLM has one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        description="HF-format checkpoint folder; on the command line the default is the "
        "built-in demo model."
    )
    dtype: DType = Field(
        "auto",
        description="Weight/activation dtype; auto = float32 on CPU, the checkpoint's on CUDA.",
    )
    device: Device = "auto"
    scheduling_policy: SchedulingPolicy = Field(
        "chunked", description="chunked (token budget per step) or layered (layer-group prefill)."
    )
    max_num_seqs: int = Field(64, ge=1, description="Most sequences running at once.")
    max_num_batched_tokens: int = Field(
        512, ge=1, description="Token budget per step (chunk size of chunked prefill)."
    )
    layered_budget: int = Field(
        8192, ge=1, description="layered: most prompt tokens in one prefill cohort (B)."
    )
    layered_max_groups: int = Field(
        16,
        ge=1,
        description="layered: most layer groups (Gmax; capped at the layer count); a prefill "
        "server also ships a prompt's KV in this many layer groups.",
    )
    layered_group_tokens: int = Field(
        512,
        ge=1,
        description="layered: prefill tokens per group step; a cohort of T tokens gets "
        "G = 1, 2, 4, 8 groups up to T = 1, 2, 4, 8 times this, else Gmax.",
    )
    block_size: int = Field(16, ge=1, le=1024, description="Tokens per KV-cache block.")
    num_gpu_blocks: int | None = Field(
        None, ge=1, description="KV-cache blocks; default: from kv_cache_memory_fraction."
    )
    kv_cache_memory_fraction: float = Field(
        0.9, gt=0.0, le=1.0, description="Share of free device memory given to the KV cache."
    )
    max_model_len: int | None = Field(
        None, ge=1, description="Longest prompt + output; default: the model's context."
    )
    enable_prefix_caching: bool = True
    speed: SpeedConfig | None = Field(
        None,
        description="SPEED (shallow prefill, deep decode), e.g. {'prefill_layers': 0.75, "
        "'anchors': 1}; default: off, or the checkpoint config's SPEED keys.",
    )
    seed: int = Field(0, description="Seed of the engine-wide generator (unseeded requests).")
    kernels: Kernels = Field(
        "auto",
        description="Layer kernels: triton (fused MoE, paged attention, KV store, "
        "RMSNorm) or torch (on the CPU: with Lamina's AVX-512/AVX2 kernels for decode-sized "
        "matmuls and decode attention where they build); auto = triton on CUDA, torch on CPU.",
    )
    batch_invariant: bool = Field(
        False,
        description="CPU: matmul kernels whose per-row result does not depend on the batch, so "
        "a request's greedy tokens never depend on what it is batched with; slower (a single "
        "row costs 3.2-3.6x).",
    )

    @field_validator("model")
    @classmethod
    def _local_checkpoint(cls, value: str) -> str:
        scheme, sep, _ = value.partition("://")
        if sep:
            raise ValueError(
                f"model {value!r} is a {scheme}:// source, but --model loads a local folder: "
                f"fetch it first with `lamina fetch-model {value} DIR`, then pass --model DIR "
                "(the operator does this in an init container)"
            )
        return value

    @model_validator(mode="after")
    def _budget_covers_decodes(self) -> EngineConfig:
        # every running decode takes one token of the step budget
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs}); raise the budget or lower max_num_seqs"
            )
        return self

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self, checkpoint_dtype: str | None):
        import torch

        name = self.dtype
        if name == "auto":
            on_cuda = self.resolved_device() == "cuda"
            name = checkpoint_dtype if on_cuda and checkpoint_dtype else "float32"
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            name
        ]
