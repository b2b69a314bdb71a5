"""SpeedConfig: the per-engine SPEED switch (shallow prefill, deep decode; arXiv 2605.06105).

    LLM(model, speed={"prefill_layers": 24, "anchors": 1})   # K = 24 of the model's layers
    LLM(model, speed={"prefill_layers": 0.75})               # K = round(0.75 * L)

Off by default. A checkpoint trained under the SPEED mask may carry its cutoff in config.json
(`speed_prefill_layers` or `lower_k`, optionally `speed_anchors`); that is used when the
engine is given no `speed` setting. What K and the anchors mean is in core/speed_layout.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lamina_engine.core.speed_layout import SpeedLayout

# config.json keys that carry a SPEED cutoff (the first present wins) and its anchor count
MODEL_CONFIG_K_KEYS = ("speed_prefill_layers", "lower_k")
MODEL_CONFIG_ANCHOR_KEY = "speed_anchors"


class SpeedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill_layers: int | float = Field(
        description="K: layers prompt tokens run through; an int count in [1, L], or a float "
        "fraction of the layers in (0, 1]."
    )
    anchors: int = Field(1, ge=0, description="Leading prompt tokens that run full depth.")
    upper_pool_fraction: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Blocks of the upper-layer KV pool per block of the lower pool (upper "
        "layers hold only anchors, the last prompt token and decode tokens).",
    )

    @field_validator("prefill_layers")
    @classmethod
    def _positive(cls, v: int | float) -> int | float:
        if isinstance(v, bool):
            raise ValueError("prefill_layers must be a layer count or a fraction, not a bool")
        if isinstance(v, float) and not 0.0 < v <= 1.0:
            raise ValueError(
                f"prefill_layers as a fraction must be in (0, 1], got {v}; "
                "pass an int for a layer count"
            )
        if isinstance(v, int) and v < 1:
            raise ValueError(f"prefill_layers must be >= 1 layer, got {v}")
        return v

    def layers_for(self, num_layers: int) -> int:
        """K for a model of `num_layers` layers."""
        k = self.prefill_layers
        if isinstance(k, float):
            return max(1, round(k * num_layers))
        if k > num_layers:
            raise ValueError(
                f"SPEED prefill_layers={k} exceeds the model's {num_layers} layers; "
                f"use a count in [1, {num_layers}] or a fraction"
            )
        return k

    def layout(self, num_layers: int) -> SpeedLayout:
        return SpeedLayout(
            num_layers, self.layers_for(num_layers), self.anchors, self.upper_pool_fraction
        )

    @classmethod
    def from_model_config(cls, config: dict) -> SpeedConfig | None:
        """The SPEED setting a checkpoint's config.json carries, or None."""
        for key in MODEL_CONFIG_K_KEYS:
            if config.get(key) is not None:
                anchors = config.get(MODEL_CONFIG_ANCHOR_KEY, 1)
                try:
                    return cls(prefill_layers=config[key], anchors=anchors)
                except ValueError as exc:
                    raise ValueError(f"config.json {key}={config[key]!r}: {exc}") from None
        return None


def resolve_speed(
    setting: SpeedConfig | None, model_path: str, num_layers: int
) -> SpeedLayout | None:
    """The engine's SPEED layout: the explicit setting, else the checkpoint's, else None."""
    if setting is None:
        try:
            raw = json.loads((Path(model_path) / "config.json").read_text())
        except (OSError, ValueError):
            return None  # the checkpoint loader has already said what is wrong
        setting = SpeedConfig.from_model_config(raw)
    return None if setting is None else setting.layout(num_layers)
