"""PreparedRequest: an OpenAI request parsed, tokenized and validated once.

The router prepares each request and forwards the prepared form to the pods (JSON, `to_wire`);
a pod that a client calls directly prepares it itself. Either way a pod's engine gets token
ids and SamplingParams, and checks only what depends on it (prompt length against its context,
ids in its vocabulary):

    client --OpenAI body--> router: prepare() --wire--> pod: from_wire() --> engine
    client --OpenAI body--> pod: prepare() -------------------------------> engine
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lamina_engine.chat_template import ChatTemplateError
from lamina_engine.sampling_params import InvalidSamplingParams, SamplingParams
from lamina_engine.serving.kv_handles import ID_PATTERN
from lamina_engine.serving.protocol import (
    NEUTRAL,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
)

Kind = Literal["completions", "chat"]


@dataclass(frozen=True)
class PreparedRequest:
    """What a pod needs to serve a request: its endpoint's kind, token ids, SamplingParams and
    how to answer (stream, usage chunk, token ids)."""

    kind: Kind
    model: str
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    return_token_ids: bool = False
    kv_handle: str | None = None  # the router's (kv_handles.py): the KV comes from a prefill

    def to_wire(self) -> dict[str, Any]:
        """The JSON body a pod's /v1/internal/generate and /v1/internal/prefill take."""
        return dataclasses.asdict(self)  # params become a dict of SamplingParams fields

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> PreparedRequest:
        """A router's body; OpenAIError 400 when it is malformed."""
        try:
            w = _Wire.model_validate(body)
            params = SamplingParams(**w.params)
        except (ValidationError, InvalidSamplingParams, TypeError) as exc:
            raise OpenAIError(
                400, f"invalid prepared request ({exc}); the router and the engine pods must "
                "run the same Lamina version",
            ) from None  # fmt: skip
        return cls(w.kind, w.model, w.prompt_ids, params, w.stream, w.include_usage,
                   w.return_token_ids, w.kv_handle)  # fmt: skip


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind
    model: str
    prompt_ids: list[int] = Field(min_length=1)
    params: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    return_token_ids: bool = False
    kv_handle: str | None = Field(None, pattern=ID_PATTERN)  # kv_handles.MAX_ID_LEN chars


def prepare(
    kind: Kind, req: CompletionRequest | ChatCompletionRequest, tokenizer
) -> PreparedRequest:
    """Tokenize and validate `req` (OpenAIError 400 on what a client got wrong)."""
    check_values(req.model_dump(exclude_defaults=True))
    defaults = tokenizer.generation_defaults if tokenizer is not None else {}
    params = sampling_params(req, defaults)
    ids = prompt_ids(req, tokenizer)
    usage = req.stream_options is not None and req.stream_options.include_usage
    return PreparedRequest(kind, req.model, ids, params, req.stream, usage, req.return_token_ids)


def check_fits(req: PreparedRequest, max_model_len: int, vocab_size: int) -> None:
    """A router's prompt ids against a pod's context and vocabulary: OpenAIError 400 in the
    handler, before the engine thread spends time on them (the engine checks them again)."""
    n = len(req.prompt_ids)
    if n + 1 > max_model_len:
        raise OpenAIError(
            400, f"prompt has {n} tokens; the context is {max_model_len} tokens (max_model_len), "
            "which must hold the prompt and at least one output token", param="prompt_ids",
        )  # fmt: skip
    if min(req.prompt_ids) < 0 or max(req.prompt_ids) >= vocab_size:
        raise OpenAIError(
            400, f"prompt token ids must be in [0, {vocab_size}) for this model", param="prompt_ids"
        )


def sampling_params(
    req: CompletionRequest | ChatCompletionRequest, defaults: dict
) -> SamplingParams:
    """The request's SamplingParams (model's generation_config fills what it leaves out)."""
    if req.n != 1:
        raise OpenAIError(400, f"n={req.n} is not supported; only n=1 (send n requests)", param="n")
    if req.presence_penalty or req.frequency_penalty:
        raise OpenAIError(
            400, "presence_penalty and frequency_penalty are not supported; leave them at 0",
            param="presence_penalty",
        )  # fmt: skip
    for name, neutral in NEUTRAL.items():
        value = getattr(req, name, None)
        if not any(value == n and type(value) is type(n) or value is n for n in neutral):
            allowed = " or ".join(repr(n) for n in neutral if n is not None) or "nothing"
            raise OpenAIError(
                400, f"{name}={value!r} is not supported by this server; leave {name} out "
                f"(or send {allowed})", param=name,
            )  # fmt: skip
    if isinstance(req, CompletionRequest):
        logprobs = req.logprobs
    else:
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
    max_tokens = _pick(
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens,
        defaults.get("max_tokens"),
        16,
    )
    kwargs: dict[str, Any] = dict(
        max_tokens=max_tokens,
        temperature=_pick(req.temperature, defaults.get("temperature"), 1.0),
        top_p=_pick(req.top_p, defaults.get("top_p"), 1.0),
        top_k=_pick(req.top_k, defaults.get("top_k"), 0),
        min_p=_pick(req.min_p, defaults.get("min_p"), 0.0),
        seed=req.seed,
        stop=req.stop,
        stop_token_ids=req.stop_token_ids,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        min_tokens=req.min_tokens,
        include_stop_str_in_output=req.include_stop_str_in_output,
        skip_special_tokens=req.skip_special_tokens,
    )
    try:
        return SamplingParams(**kwargs)
    except InvalidSamplingParams as exc:
        # "SamplingParams.top_p=2 is invalid: ..." -> param "top_p"
        param = str(exc).split("=", 1)[0].removeprefix("SamplingParams.")
        raise OpenAIError(400, str(exc), param=param) from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_values(body: Any, path: str = "") -> None:
    """OpenAIError 400 for a non-finite float or a string with a lone UTF-16 surrogate (JSON's
    "\\ud800" escape) anywhere in `body`: neither can be tokenized nor encoded as JSON again."""
    if isinstance(body, str):
        if _SURROGATE.search(body):
            raise OpenAIError(
                400, f"{path or 'body'}: the text holds a lone UTF-16 surrogate (an unpaired "
                "\\ud800-\\udfff escape), which is not valid Unicode; send valid UTF-8 text",
                param=path or None,
            )  # fmt: skip
    elif isinstance(body, float):
        if not math.isfinite(body):
            raise OpenAIError(
                400, f"{path or 'body'}={body}: numbers must be finite", param=path or None
            )
    elif isinstance(body, dict):
        for key, value in body.items():
            check_values(key, path)
            check_values(value, f"{path}.{key}" if path else str(key))
    elif isinstance(body, list | tuple):
        for i, value in enumerate(body):
            check_values(value, f"{path}.{i}")


def _pick(value, default, fallback):
    if value is not None:
        return value
    return default if default is not None else fallback


def prompt_ids(req: CompletionRequest | ChatCompletionRequest, tok) -> list[int]:
    """The prompt as token ids: chat through the model's template, text through `tok`."""
    if isinstance(req, ChatCompletionRequest):
        if tok is None:
            raise OpenAIError(400, "this model has no tokenizer: chat is unavailable")
        try:
            msgs = [m.model_dump(exclude_none=True) for m in req.messages]
            tools = (
                None if req.tools is None else [t.model_dump(exclude_none=True) for t in req.tools]
            )
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tools=tools)
        except (ChatTemplateError, ValueError, TypeError) as exc:
            raise OpenAIError(400, f"messages: {exc}", param="messages") from None
        return tok.encode(text, add_special_tokens=False)
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        if len(prompt) != 1:
            raise OpenAIError(400, "send one prompt per request", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        if tok is None:
            raise OpenAIError(400, "this model has no tokenizer: send token ids", param="prompt")
        return tok.encode(prompt)
    if not prompt:
        raise OpenAIError(400, "the prompt is empty", param="prompt")
    return list(prompt)
