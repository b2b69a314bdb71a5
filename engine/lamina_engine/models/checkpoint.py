"""Load an HF checkpoint folder: config.json + model.safetensors or sharded safetensors.

Every tensor is checked against the shape config.json implies before any data is read, and
HF names are mapped to this engine's layout: q/k/v fused into `qkv_proj`, gate/up fused into
`gate_up_proj`, experts stacked per layer as w13 [E, 2I, D] and w2 [E, D, I]. Both expert
layouts are read: per-expert tensors (what `save_pretrained` and the hub write:
`mlp.experts.{e}.gate_proj`, or Mixtral's `block_sparse_moe.experts.{e}.w1/w3/w2`) and
transformers 5's fused in-memory names (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from lamina_engine.models.config import ConfigError, ModelConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """The checkpoint folder is missing, incomplete or inconsistent with its config.json."""


def checkpoint_dtype(path: str | Path) -> str | None:
    """The dtype config.json names (float32, bfloat16, float16), or None when it names none
    or cannot be read (the loader then reports the real problem with a clear message)."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = cfg.get("torch_dtype") or cfg.get("dtype")
    return name if name in ("float32", "bfloat16", "float16") else None


def read_config(path: str | Path) -> ModelConfig:
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist or is not a folder")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file} is missing: a checkpoint folder needs config.json")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_file} must hold a JSON object, found {type(raw).__name__}")
    try:
        return ModelConfig.from_hf_dict(raw)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from e


def find_weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (reads headers only)."""
    index_file = folder / INDEX_FILE
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{index_file} is not a valid index (needs a weight_map object): {e}"
            ) from e
        shards = {}
        for name, shard in weight_map.items():
            if not (folder / shard).is_file():
                raise CheckpointError(
                    f"{index_file} maps tensor {name} to shard {shard}, which is not in {folder}"
                )
            shards[name] = folder / shard
        return shards
    files = [folder / SINGLE_FILE] if (folder / SINGLE_FILE).is_file() else []
    files = files or sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"no weights in {folder}: expected {SINGLE_FILE} or {INDEX_FILE} with its shards"
        )
    located: dict[str, Path] = {}
    for file in files:
        for name in _open(file).keys():
            located[name] = file
    return located


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read safetensors file {file}: {e}") from e


@dataclass
class _Param:
    sources: list[str]  # HF tensor names, in the order `combine` expects
    combine: Callable[[list[Tensor]], Tensor]


def _single(ts: list[Tensor]) -> Tensor:
    return ts[0]


def _cat(ts: list[Tensor]) -> Tensor:
    return torch.cat(ts, dim=0)


def _stack_pairs(ts: list[Tensor]) -> Tensor:  # [gate_0, up_0, gate_1, ...] -> [E, 2I, D]
    return torch.stack([torch.cat(ts[i : i + 2], dim=0) for i in range(0, len(ts), 2)])


def _stack(ts: list[Tensor]) -> Tensor:
    return torch.stack(ts)


def plan_tensors(
    config: ModelConfig, available: set[str]
) -> tuple[dict[str, _Param], dict[str, tuple[int, ...]]]:
    """(engine param name -> how to build it, HF name -> expected shape)."""
    c = config
    d, hd, h, kv = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads
    params: dict[str, _Param] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def add(name: str, sources: dict[str, tuple[int, ...]], combine=_single) -> None:
        params[name] = _Param(list(sources), combine)
        shapes.update(sources)

    add("embed_tokens.weight", {"model.embed_tokens.weight": (c.vocab_size, d)})
    add("norm.weight", {"model.norm.weight": (d,)})
    if not c.tie_word_embeddings:
        add("lm_head.weight", {"lm_head.weight": (c.vocab_size, d)})
    for i in range(c.num_layers):
        p, q = f"model.layers.{i}", f"layers.{i}"
        add(f"{q}.input_norm.weight", {f"{p}.input_layernorm.weight": (d,)})
        add(f"{q}.post_attn_norm.weight", {f"{p}.post_attention_layernorm.weight": (d,)})
        proj_out = {"q": h * hd, "k": kv * hd, "v": kv * hd}
        kinds = ["weight", "bias"] if c.attention_bias else ["weight"]
        for kind in kinds:
            srcs = {
                f"{p}.self_attn.{n}_proj.{kind}": (o, d) if kind == "weight" else (o,)
                for n, o in proj_out.items()
            }
            add(f"{q}.attn.qkv_proj.{kind}", srcs, _cat)
        add(f"{q}.attn.o_proj.weight", {f"{p}.self_attn.o_proj.weight": (d, h * hd)})
        if c.attention_bias:
            add(f"{q}.attn.o_proj.bias", {f"{p}.self_attn.o_proj.bias": (d,)})
        if c.qk_norm != "none":
            q_dim, k_dim = (hd, hd) if c.qk_norm == "per_head" else (h * hd, kv * hd)
            add(f"{q}.attn.q_norm.weight", {f"{p}.self_attn.q_norm.weight": (q_dim,)})
            add(f"{q}.attn.k_norm.weight", {f"{p}.self_attn.k_norm.weight": (k_dim,)})
        if c.is_moe_layer(i):
            _plan_moe(c, p, q, available, add)
        else:
            inter = c.intermediate_size
            for kind in ["weight", "bias"] if c.mlp_bias else ["weight"]:
                shp = (lambda o, i_: (o, i_)) if kind == "weight" else (lambda o, i_: (o,))
                add(
                    f"{q}.mlp.gate_up_proj.{kind}",
                    {
                        f"{p}.mlp.gate_proj.{kind}": shp(inter, d),
                        f"{p}.mlp.up_proj.{kind}": shp(inter, d),
                    },
                    _cat,
                )
                add(f"{q}.mlp.down_proj.{kind}", {f"{p}.mlp.down_proj.{kind}": shp(d, inter)})
    return params, shapes


def _plan_moe(c: ModelConfig, p: str, q: str, available: set[str], add) -> None:
    e, d, inter = c.num_experts, c.hidden_size, c.moe_intermediate_size
    if f"{p}.mlp.experts.gate_up_proj" in available:  # transformers 5 fused layout
        add(f"{q}.mlp.router.weight", {f"{p}.mlp.gate.weight": (e, d)})
        add(f"{q}.mlp.w13", {f"{p}.mlp.experts.gate_up_proj": (e, 2 * inter, d)})
        add(f"{q}.mlp.w2", {f"{p}.mlp.experts.down_proj": (e, d, inter)})
        return
    if c.model_type == "mixtral":
        block, gate, up, down = f"{p}.block_sparse_moe", "w1", "w3", "w2"
    else:
        block, gate, up, down = f"{p}.mlp", "gate_proj", "up_proj", "down_proj"
    add(f"{q}.mlp.router.weight", {f"{block}.gate.weight": (e, d)})
    w13: dict[str, tuple[int, ...]] = {}
    for x in range(e):
        w13[f"{block}.experts.{x}.{gate}.weight"] = (inter, d)
        w13[f"{block}.experts.{x}.{up}.weight"] = (inter, d)
    add(f"{q}.mlp.w13", w13, _stack_pairs)
    w2 = {f"{block}.experts.{x}.{down}.weight": (d, inter) for x in range(e)}
    add(f"{q}.mlp.w2", w2, _stack)


def _ignorable(name: str, config: ModelConfig) -> bool:
    # Old exports keep RoPE's derived buffer; tied models may still carry a copy of the head.
    return name.endswith("rotary_emb.inv_freq") or (
        config.tie_word_embeddings and name == "lm_head.weight"
    )


GiB = 1 << 30


def weight_bytes(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> int:
    """Bytes the checkpoint's tensors (name -> shape) take on the device once cast to dtype."""
    numel = sum(int(torch.Size(shape).numel()) for shape in shapes.values())
    return numel * torch.empty((), dtype=dtype).element_size()


def check_fits_device(
    needed: int, device: torch.device | str, folder: Path, free: int | None = None
) -> None:
    """Raise CheckpointError before loading when the weights alone (`needed` bytes) exceed what
    the CUDA `device` has free (`free`, asked of the driver when None); the KV cache needs room
    on top. The engine runs one device per pod (no tensor or expert parallelism yet), so a
    second GPU in the pod would not help. Other devices are not checked."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    if free is None:
        free, _ = torch.cuda.mem_get_info(device)
    if needed > free:
        raise CheckpointError(
            f"the weights of {folder.name} need {needed / GiB:.1f} GiB on {device}, which has "
            f"{free / GiB:.1f} GiB free; the engine uses one device per pod (no tensor or expert "
            "parallelism yet): pick a GPU with more memory, a smaller dtype or a smaller model"
        )


def load_checkpoint(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """-> (config, state dict in CausalLM's parameter names, cast to dtype on device)."""
    folder = Path(path)
    config = read_config(folder)
    located = find_weight_files(folder)
    params, shapes = plan_tensors(config, set(located))
    handles = {file: _open(file) for file in set(located.values())}

    missing = [n for n in shapes if n not in located]
    if missing:
        raise CheckpointError(
            f"{len(missing)} tensor(s) that config.json implies are missing from {folder}, "
            f"e.g. {', '.join(missing[:5])}; is the checkpoint complete and for this model_type?"
        )
    unexpected = [n for n in located if n not in shapes and not _ignorable(n, config)]
    if unexpected:
        raise CheckpointError(
            f"{len(unexpected)} tensor(s) in {folder} are not used by a {config.model_type} "
            f"model with this config.json, e.g. {', '.join(sorted(unexpected)[:5])}"
        )
    for name, expected in shapes.items():
        try:
            actual = tuple(handles[located[name]].get_slice(name).get_shape())
        except SafetensorError as e:
            raise CheckpointError(
                f"tensor {name} is listed in {INDEX_FILE} under shard {located[name].name}, "
                f"which does not hold it: {e}"
            ) from e
        if actual != expected:
            raise CheckpointError(
                f"tensor {name} in {located[name].name} has shape {actual}, but config.json "
                f"implies {expected}; the weights and config.json do not belong together"
            )

    check_fits_device(weight_bytes(shapes, dtype), device, folder)
    state_dict = {}
    items = params.items()
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc=f"loading {folder.name}", unit="tensor")
    for name, param in items:
        parts = [handles[located[s]].get_tensor(s).to(dtype) for s in param.sources]
        state_dict[name] = param.combine(parts).to(device)
    return config, state_dict
