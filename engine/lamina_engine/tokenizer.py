"""Tokenizer: text <-> token ids and chat prompts, from a model folder in HF format.

Reads, from one folder:
  tokenizer.json          the `tokenizers` pipeline (required)
  tokenizer_config.json   bos/eos/pad/unk tokens (strings or AddedToken dicts), chat_template
                          (a string or a list of {"name", "template"}), add_bos_token
  chat_template.jinja     newer transformers save the default template here; it wins if present
  generation_config.json  eos_token_id (int or list) and default sampling values
  config.json             eos_token_id, used only when neither file above names one

Encoding follows tokenizer.json's post-processor (that is what HF AutoTokenizer does), except
that an explicit `add_bos_token` in tokenizer_config.json decides whether ids start with BOS.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from lamina_engine.chat_template import ChatTemplateError, render_chat_template

# generation_config.json keys that map onto SamplingParams fields (vLLM's names on the right).
_GENERATION_DEFAULT_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "max_new_tokens": "max_tokens",
}
_SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"special token {value!r} is neither a string nor a dict with 'content'")


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    raise ValueError(f"eos_token_id must be an int or a list of ints, got {value!r}")


def _chat_templates(folder: Path, config: Mapping[str, Any]) -> dict[str, str]:
    """Named templates; the one used by default is under "default"."""
    raw = config.get("chat_template")
    templates: dict[str, str] = {}
    if isinstance(raw, str):
        templates["default"] = raw
    elif isinstance(raw, list):
        for entry in raw:
            if not (isinstance(entry, Mapping) and {"name", "template"} <= entry.keys()):
                raise ValueError(
                    f"{folder / 'tokenizer_config.json'}: chat_template list entries must be "
                    f'{{"name": ..., "template": ...}}, got {entry!r}'
                )
            templates[entry["name"]] = entry["template"]
    elif raw is not None:
        raise ValueError(
            f"{folder / 'tokenizer_config.json'}: chat_template must be a string or a list of "
            f"named templates, got {type(raw).__name__}"
        )
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    return templates


class Tokenizer:
    """A model's tokenizer, special tokens and chat templates."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        special_tokens: Mapping[str, str | None],
        eos_token_ids: Iterable[int],
        chat_templates: Mapping[str, str] | None = None,
        add_bos_token: bool | None = None,
        generation_defaults: Mapping[str, Any] | None = None,
        name: str = "",
    ) -> None:
        self.backend = backend
        self.name = name
        self.special_tokens = {k: v for k, v in special_tokens.items() if v is not None}
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.pad_token = self.special_tokens.get("pad_token")
        self.bos_token_id = self.token_to_id(self.bos_token)
        self.eos_token_id = self.token_to_id(self.eos_token)
        self.pad_token_id = self.token_to_id(self.pad_token)
        self.eos_token_ids: set[int] = set(eos_token_ids)
        self.chat_templates = dict(chat_templates or {})
        self.add_bos_token = add_bos_token
        self.generation_defaults = dict(generation_defaults or {})
        # Ids of added tokens flagged special: what skip_special_tokens leaves out.
        self.special_token_ids: set[int] = {
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        }

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """Load from a model folder; only tokenizer.json is required."""
        folder = Path(path)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"no tokenizer.json in {folder}: Lamina needs the fast-tokenizer file; save it "
                "with transformers' `AutoTokenizer.from_pretrained(...).save_pretrained(folder)`"
            )
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        config = _read_json(folder / "tokenizer_config.json")
        generation = _read_json(folder / "generation_config.json")
        model_config = _read_json(folder / "config.json")

        special = {name: _token_text(config.get(name)) for name in _SPECIAL_TOKEN_NAMES}
        eos_ids = set(_as_id_list(generation.get("eos_token_id")))
        eos_text = special["eos_token"]
        if eos_text is not None and backend.token_to_id(eos_text) is not None:
            eos_ids.add(backend.token_to_id(eos_text))
        if not eos_ids:
            eos_ids = set(_as_id_list(model_config.get("eos_token_id")))

        add_bos = config.get("add_bos_token")
        defaults = {
            ours: generation[theirs]
            for theirs, ours in _GENERATION_DEFAULT_KEYS.items()
            if generation.get(theirs) is not None
        }
        return cls(
            backend,
            special_tokens=special,
            eos_token_ids=eos_ids,
            chat_templates=_chat_templates(folder, config),
            add_bos_token=add_bos if isinstance(add_bos, bool) else None,
            generation_defaults=defaults,
            name=str(folder),
        )

    @classmethod
    def maybe_from_pretrained(cls, path: str | Path) -> Tokenizer | None:
        """from_pretrained, or None when the folder has no tokenizer.json (token-id-only use)."""
        if not (Path(path) / "tokenizer.json").is_file():
            return None
        return cls.from_pretrained(path)

    @property
    def vocab_size(self) -> int:
        """Entries the tokenizer can produce, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with add_special_tokens, BOS etc. as the model expects."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        # encode_batch releases the GIL (encode holds it: seconds per MB), so servers that
        # tokenize on a worker thread keep their event loop answering meanwhile
        ids = self.backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        if add_special_tokens and self.add_bos_token is not None and self.bos_token_id is not None:
            starts_with_bos = bool(ids) and ids[0] == self.bos_token_id
            if self.add_bos_token and not starts_with_bos:
                ids.insert(0, self.bos_token_id)
            elif not self.add_bos_token and starts_with_bos and not text.startswith(self.bos_token):
                # The post-processor added BOS although the config says not to.
                ids.pop(0)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. No clean-up of spaces before punctuation: transformers skips it for
        BPE tokenizers too, and it would make streamed text differ from the final text."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def get_chat_template(self, chat_template: str | None = None) -> str:
        """The template source: by name, a literal template, or the default one."""
        if chat_template is not None:
            if chat_template in self.chat_templates:
                return self.chat_templates[chat_template]
            if "{" in chat_template:  # a literal Jinja template, not a name
                return chat_template
            raise ChatTemplateError(
                f"no chat template named {chat_template!r} in {self.name or 'this tokenizer'}; "
                f"available: {sorted(self.chat_templates) or 'none'}"
            )
        if "default" in self.chat_templates:
            return self.chat_templates["default"]
        raise ChatTemplateError(
            f"{self.name or 'this tokenizer'} has no chat template (none in "
            "tokenizer_config.json or chat_template.jinja); pass chat_template=..., or send a "
            "plain completion prompt instead of chat messages"
        )

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render a conversation to the prompt string (encode it with add_special_tokens=False:
        templates already write BOS where the model wants it)."""
        return render_chat_template(
            self.get_chat_template(chat_template),
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            special_tokens=self.special_tokens,
            **kwargs,
        )
