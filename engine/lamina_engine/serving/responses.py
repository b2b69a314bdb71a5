"""OpenAI response bodies and SSE chunks: a whole RequestOutput, or one RequestDelta a chunk."""

from __future__ import annotations

import json
import time
from typing import Any

from lamina_engine.request_output import RequestDelta, RequestOutput
from lamina_engine.tokenizer import Tokenizer


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_DONE = sse("[DONE]")


def usage(out: RequestOutput) -> dict[str, int]:
    p, c = len(out.prompt_token_ids), len(out.token_ids)
    body = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    if out.num_cached_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": out.num_cached_tokens}
    return body


def finish_reason(out: RequestOutput | RequestDelta) -> str | None:
    if not out.finished:
        return None
    return {"abort": "stop", "error": "stop"}.get(out.finish_reason, out.finish_reason)


class ResponseBuilder:
    """Bodies for one request: `kind` is "completions" or "chat". Streaming turns each delta
    into one chunk as it comes (each token's text and logprobs are sent once)."""

    def __init__(self, kind: str, request_id: str, model: str, tokenizer: Tokenizer | None):
        self.kind, self.id, self.model, self.tok = kind, request_id, model, tokenizer
        self.created = int(time.time())
        self.sent_chars = 0  # text characters streamed so far
        self.sent_tokens = 0
        self.return_token_ids = False

    def _token_str(self, token_id: int) -> str:
        if self.tok is None:
            return f"token_id:{token_id}"
        text = self.tok.decode([token_id], skip_special_tokens=False)
        # A token that is part of a UTF-8 character decodes to U+FFFD alone; name it by id so
        # distinct tokens stay distinct keys in top_logprobs.
        return f"token_id:{token_id}" if "\ufffd" in text else text

    def _logprobs(self, out: RequestOutput | RequestDelta, text_offset: int) -> Any:
        """Logprobs of `out`'s tokens; completions' text offsets start at `text_offset`."""
        if out.logprobs is None:
            return None
        ids, lps, tops = out.token_ids, out.logprobs, out.top_logprobs
        if self.kind == "completions":
            top = None
            if tops is not None:
                top = [{self._token_str(t): lp for t, lp in d.items()} for d in tops]
            offsets, pos = [], text_offset
            for t in ids:
                offsets.append(pos)
                pos += len(self._token_str(t))
            return {
                "tokens": [self._token_str(t) for t in ids],
                "token_logprobs": lps,
                "top_logprobs": top,
                "text_offset": offsets,
            }
        content = []
        for i, (t, lp) in enumerate(zip(ids, lps)):
            s = self._token_str(t)
            alts = [] if tops is None else tops[i].items()
            content.append(
                {
                    "token": s,
                    "logprob": lp,
                    "bytes": list(s.encode()),
                    "top_logprobs": [
                        {
                            "token": (a := self._token_str(k)),
                            "logprob": v,
                            "bytes": list(a.encode()),
                        }
                        for k, v in alts
                    ],
                }
            )
        return {"content": content}

    def full(self, out: RequestOutput) -> dict[str, Any]:
        """The non-streaming response body."""
        reason = finish_reason(out)
        if self.kind == "completions":
            choice = {"index": 0, "text": out.text, "logprobs": self._logprobs(out, 0)}
            obj = "text_completion"
        else:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": out.text},
                "logprobs": self._logprobs(out, 0),
            }
            obj = "chat.completion"
        choice["finish_reason"] = reason
        choice["stop_reason"] = out.stop_reason
        if self.return_token_ids:
            choice["token_ids"] = list(out.token_ids)
            choice["prompt_token_ids"] = list(out.prompt_token_ids)
        return dict(self._body(obj, choice), usage=usage(out))

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        obj = "text_completion" if self.kind == "completions" else "chat.completion.chunk"
        return self._body(obj, choice)

    def _body(self, obj: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": [choice]}  # fmt: skip

    def first_chunk(self) -> bytes | None:
        """Chat streams open with the assistant role."""
        if self.kind != "chat":
            return None
        delta = {"role": "assistant", "content": ""}
        return sse(
            self._chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None})
        )

    def delta_chunk(self, out: RequestDelta) -> bytes | None:
        """The chunk of one delta's text (and logprobs); None when nothing new is due."""
        delta = out.text
        if not delta and not out.finished and not (out.token_ids and out.logprobs is not None):
            return None
        lp = self._logprobs(out, self.sent_chars if self.sent_tokens else 0)
        self.sent_chars += len(delta)
        self.sent_tokens += len(out.token_ids)
        reason = finish_reason(out)
        if self.kind == "completions":
            choice = {"index": 0, "text": delta, "logprobs": lp, "finish_reason": reason}
        else:
            d = {"content": delta} if delta or not out.finished else {}
            choice = {"index": 0, "delta": d, "logprobs": lp, "finish_reason": reason}
        if out.finished:
            choice["stop_reason"] = out.stop_reason
        return sse(self._chunk(choice))

    def usage_chunk(self, out: RequestOutput) -> bytes:
        body = self._chunk({})
        body["choices"] = []
        body["usage"] = usage(out)
        return sse(body)
