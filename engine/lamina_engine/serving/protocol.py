"""OpenAI API shapes: request bodies (validated), errors, and SamplingParams from a request.

Unknown fields are ignored (as OpenAI's server does for newer clients); fields we cannot honour
(`n` > 1, `echo`, `best_of` > 1, several prompts in one request) are a 400 that says so.
`kv_transfer` is Lamina's extension: the router's handle of a prompt whose KV a prefill pod
ships (decode pods only).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lamina_engine.chat_template import ChatTemplateError
from lamina_engine.sampling_params import InvalidSamplingParams, SamplingParams


class OpenAIError(Exception):
    """Raised by handlers; rendered as OpenAI's error body with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type, param, code,
        )  # fmt: skip

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error", 503: "service_unavailable"}
    return OpenAIError(status, message, kind.get(status, "server_error"), param).body()


class KVTransferHandle(BaseModel):
    request_id: str = Field(min_length=1, max_length=200)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    # vLLM's extensions that the engine supports
    top_k: int | None = None
    min_p: float | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    kv_transfer: KVTransferHandle | None = None
    return_token_ids: bool = False  # vLLM's extension: choices[].token_ids


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None


Endpoint = Literal["completions", "chat"]


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
    if isinstance(req, CompletionRequest):
        if req.echo:
            raise OpenAIError(400, "echo=true is not supported", param="echo")
        if req.best_of not in (None, 1):
            raise OpenAIError(400, "best_of > 1 is not supported", param="best_of")
        if req.suffix:
            raise OpenAIError(400, "suffix is not supported", param="suffix")
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
    )
    try:
        return SamplingParams(**kwargs)
    except InvalidSamplingParams as exc:
        # "SamplingParams.top_p=2 is invalid: ..." -> param "top_p"
        param = str(exc).split("=", 1)[0].removeprefix("SamplingParams.")
        raise OpenAIError(400, str(exc), param=param) from None


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
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tools=req.tools)
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
