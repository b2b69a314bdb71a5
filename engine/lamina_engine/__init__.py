"""Lamina engine: MoE models over a paged KV cache with continuous batching.

from lamina_engine import LLM, SamplingParams
"""

from lamina_engine.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams"]


def __getattr__(name: str):
    # LLM pulls in torch and the model code; importing SamplingParams alone stays light.
    if name == "LLM":
        from lamina_engine.llm import LLM

        return LLM
    raise AttributeError(name)
