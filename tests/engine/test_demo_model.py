"""The shipped demo checkpoint: present, small, Qwen3-MoE, loadable offline, and it writes words.

HF transformers is the oracle: if it loads the folder and generates English, so can users.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers
from safetensors import safe_open

from lamina_engine.demo import demo_model_path

MAX_CHECKPOINT_BYTES = 20 * 2**20
# A "dictionary-like" word: letters, optionally with inner apostrophes or hyphens (don't, well-read),
# after stripping the punctuation around it.
WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")


def alphabetic_fraction(text: str) -> tuple[float, int]:
    """(fraction of whitespace-separated pieces that are words, number of pieces)."""
    pieces = text.split()
    words = [p for p in pieces if WORD.fullmatch(p.strip('.,;:!?"()[]`*_'))]
    return len(words) / max(1, len(pieces)), len(pieces)


@pytest.fixture(scope="module")
def folder():
    return demo_model_path()


@pytest.fixture(scope="module")
def tokenizer(folder):
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="module")
def model(folder):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, dtype=torch.float32
    ).eval()


def greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, list[int]]:
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    new = ids[0, enc["input_ids"].shape[1] :].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new


def test_shipped_files_exist_and_fit_the_size_budget(folder):
    names = {p.name for p in folder.iterdir()}
    expected = {"config.json", "generation_config.json", "model.safetensors"}
    assert expected | {"tokenizer.json", "tokenizer_config.json"} <= names
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total <= MAX_CHECKPOINT_BYTES, f"demo checkpoint is {total / 2**20:.1f} MiB"


def test_config_is_a_small_qwen3_moe_stored_in_bfloat16(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe"
    assert config["architectures"] == ["Qwen3MoeForCausalLM"]
    assert config["num_experts"] == 8 and config["num_experts_per_tok"] == 2
    assert config["mlp_only_layers"] == [] and config["decoder_sparse_step"] == 1
    assert config["num_attention_heads"] * config["head_dim"] == 256
    assert config["max_position_embeddings"] == 2048
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"BF16"}
    # The hub's per-expert key layout, which checkpoint loaders expect.
    assert "model.layers.0.mlp.experts.7.down_proj.weight" in keys
    assert "lm_head.weight" in keys


def test_generation_config_stops_at_chat_and_document_ends(folder, tokenizer):
    gen = json.loads((folder / "generation_config.json").read_text())
    im_end, eot = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert gen["eos_token_id"] == [im_end, eot]
    assert 0 < gen["temperature"] <= 1 and 0 < gen["top_p"] <= 1


def test_tokenizer_round_trips_text_and_keeps_special_tokens_whole(tokenizer):
    text = "Don't panic!  Résumé: 42 apples, naïve café.\n\tThe end."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|endoftext|>"


def test_chat_template_renders_chatml(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    plain = tokenizer.apply_chat_template(messages[1:], tokenize=False)
    assert plain == "<|im_start|>user\nHi<|im_end|>\n"


def test_greedy_completion_is_mostly_english_words(model, tokenizer):
    text, _ = greedy(model, tokenizer, "The secret of a happy life is", max_new_tokens=32)
    fraction, pieces = alphabetic_fraction(text)
    assert pieces >= 8, f"too few words generated: {text!r}"
    assert fraction >= 0.6, f"only {fraction:.0%} words in {text!r}"


def test_chat_answer_is_words_and_stops_at_an_eos_token(folder, model, tokenizer):
    # generate() stops at any id in generation_config's eos list (<|im_end|> or <|endoftext|>).
    eos_ids = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    messages = [{"role": "user", "content": "Tell me a quote."}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text, new = greedy(model, tokenizer, prompt, max_new_tokens=96)
    assert new[-1] in eos_ids, f"no EOS within 96 tokens after {text!r}"
    fraction, pieces = alphabetic_fraction(text)
    assert pieces >= 3 and fraction >= 0.6, f"only {fraction:.0%} words in {text!r}"
