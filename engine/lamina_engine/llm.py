"""LLM: the offline API (vLLM's shape): generate() and chat() over a batch of prompts."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence as Seq
from typing import Any

from lamina_engine.config import EngineConfig
from lamina_engine.engine import Engine, InvalidRequest
from lamina_engine.engine_stats import EngineStats
from lamina_engine.request_output import RequestOutput
from lamina_engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)

Prompt = str | list[int]
Message = dict[str, Any]


class LLM:
    """Offline generation with continuous batching over a paged KV cache.

        llm = LLM(model="path/to/checkpoint", max_num_seqs=16)
        outs = llm.generate(["Hello"], SamplingParams(max_tokens=32, temperature=0))
        print(outs[0].text, outs[0].metrics.ttft)

    `model` is a checkpoint folder with keyword arguments that are EngineConfig fields
    (dtype, device, scheduling_policy, max_num_seqs, max_num_batched_tokens, block_size, ...),
    or a whole EngineConfig.
    """

    def __init__(self, model: str | EngineConfig, *, progress: bool = False, **kwargs: Any):
        if isinstance(model, EngineConfig):
            self.config = EngineConfig(**{**model.model_dump(), **kwargs}) if kwargs else model
        else:
            self.config = EngineConfig(model=str(model), **kwargs)
        self.engine = Engine(self.config, progress=progress)
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def stats(self) -> EngineStats:
        """Cumulative counters: steps, prefill/decode tokens, preemptions, expert bytes."""
        return self.engine.stats

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (strings or token-id lists); outputs in input order.

        A request that cannot be served (e.g. longer than the context) comes back with
        finish_reason "error" and `error` saying why; the others are unaffected.
        """
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(
                    f"got {len(prompts)} prompts but {len(params)} SamplingParams; "
                    "pass one SamplingParams, or one per prompt"
                )
        results: list[RequestOutput] = []
        for prompt, p in zip(prompts, params):
            rid = str(next(self._ids))
            try:
                results.append(self.engine.add_request(rid, prompt, p))
            except InvalidRequest as exc:
                log.warning("request %s rejected: %s", rid, exc)
                ids = prompt if isinstance(prompt, list) else []
                text = prompt if isinstance(prompt, str) else None
                results.append(
                    RequestOutput(
                        rid, text, list(ids), finished=True, finish_reason="error", error=str(exc)
                    )
                )
        while self.engine.has_unfinished():
            self.engine.step()
        return results

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation (or a list) and generate."""
        if self.tokenizer is None:
            raise ValueError(f"{self.config.model} has no tokenizer: chat() needs one")
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        texts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=add_generation_prompt)
            for c in conversations
        ]
        # The template already wrote any BOS/special tokens as text: encode without adding more.
        ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        outs = self.generate(ids, sampling_params)
        for out, text in zip(outs, texts):
            out.prompt = text
        return outs
