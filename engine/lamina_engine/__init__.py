"""Lamina engine: MoE models over a paged KV cache with continuous batching.

from lamina_engine import LLM, SamplingParams
"""

from lamina_engine.cpu_reproducibility import request_mkl_cnr

# Before any matmul: MKL reads MKL_CBWR once, when it first runs (cpu_reproducibility.py).
request_mkl_cnr()

from lamina_engine.sampling_params import SamplingParams  # noqa: E402

__all__ = ["LLM", "SamplingParams"]


def __getattr__(name: str):
    # LLM pulls in torch and the model code; importing SamplingParams alone stays light.
    if name == "LLM":
        from lamina_engine.llm import LLM

        return LLM
    raise AttributeError(name)
