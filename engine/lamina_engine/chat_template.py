"""Chat templates: render a conversation to a prompt string the way HF transformers does.

Templates are Jinja2 from the model's files and therefore untrusted code: they run in an
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks (so whitespace matches what the
model saw in training), the loop-control extension, a `{% generation %}` block tag, and the
helpers templates on the Hub rely on: `raise_exception`, `strftime_now` and a `tojson` filter
that does not HTML-escape (Jinja's own escapes `<`, `>` and `&`, which changes the prompt).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The conversation, the tools or the template itself cannot be rendered."""


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks.

    Serving needs only the text, so the block renders its body unchanged.
    """

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(
            lineno
        )

    def _render_body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
    """Parse a template once; the same template string is reused for every request."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(
            f"the chat template is not valid Jinja (line {exc.lineno}: {exc.message}); "
            "fix chat_template in tokenizer_config.json or pass a corrected template"
        ) from exc


def _flatten_content(index: int, content: Any) -> Any:
    """OpenAI lets content be a list of parts; text-only templates expect one string."""
    if isinstance(content, str) or content is None:
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ChatTemplateError(
                    f"messages[{index}].content has a {kind!r} part; only text parts "
                    "({'type': 'text', 'text': ...}) are supported"
                )
            if not isinstance(part.get("text"), str):
                raise ChatTemplateError(f"messages[{index}].content has a text part without 'text'")
            texts.append(part["text"])
        return "\n".join(texts)
    raise ChatTemplateError(
        f"messages[{index}].content must be a string or a list of text parts, "
        f"got {type(content).__name__}"
    )


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check the conversation's shape and return plain-dict copies the template may read.

    Keys whose value is None are dropped (OpenAI clients send `content: null` next to
    tool_calls; templates test for a missing key, not for None), as transformers does.
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(
            "messages must be a list of dicts like [{'role': 'user', 'content': 'Hi'}], "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise ChatTemplateError("messages is empty; send at least one message")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(
                f"messages[{index}] must be a dict with 'role' and 'content', "
                f"got {type(message).__name__}"
            )
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ChatTemplateError(
                f"messages[{index}] needs a non-empty string 'role' (system, user, assistant "
                f"or tool), got {role!r}"
            )
        if "content" not in message and not message.get("tool_calls"):
            raise ChatTemplateError(
                f"messages[{index}] (role {role!r}) has no 'content'; every message needs one "
                "(an assistant message may carry tool_calls instead)"
            )
        plain = {key: value for key, value in message.items() if value is not None}
        if "content" in plain:
            plain["content"] = _flatten_content(index, plain["content"])
        checked.append(plain)
    return checked


def render_chat_template(
    source: str,
    messages: Any,
    *,
    add_generation_prompt: bool,
    tools: Sequence[Mapping[str, Any]] | None,
    special_tokens: Mapping[str, str],
    **kwargs: Any,
) -> str:
    """Render `messages` with the template `source`.

    special_tokens: bos_token, eos_token, ... as strings; caller kwargs override them, as in
    transformers (`template_kwargs = {**special_tokens_map, **kwargs}`).
    """
    template = compile_chat_template(source)
    checked = validate_messages(messages)
    if tools is not None:
        if isinstance(tools, Mapping) or not isinstance(tools, Sequence):
            raise ChatTemplateError("tools must be a list of JSON-schema dicts")
        for index, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                raise ChatTemplateError(
                    f"tools[{index}] must be a JSON-schema dict (e.g. "
                    "{'type': 'function', 'function': {...}}), "
                    f"got {type(tool).__name__}"
                )
        tools = [dict(tool) for tool in tools]
    variables = {**special_tokens, **kwargs}
    try:
        return template.render(
            messages=checked,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"the chat template rejected the conversation: {exc}") from exc
