"""Train the tiny Qwen3-MoE demo checkpoint that ships in engine/lamina_engine/demo/model/.

The corpus is Debian's `fortunes` package (BSD fortune cookies: quotes, jokes, short poems),
read from /usr/share/games/fortunes, plus synthetic ChatML turns whose assistant answers are
fortunes, so both plain completion and chat give English words that end with EOS.

    apt-get install -y fortunes
    .venv/bin/python scripts/train_demo_model.py --out engine/lamina_engine/demo/model --steps 700

That is the run that made the shipped model (engine/lamina_engine/demo/README.md has its numbers). Instead of
`--steps`, `--minutes N` times the first steps and turns the budget into a step count (printed),
which `--steps` then reproduces exactly (seeds are fixed; CPU, 2 threads).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Left out: pictures, untranslated text, and the files of jokes about groups of people.
SKIPPED_FILES = {"ascii-art", "translate-me", "ethnic", "drugs", "men-women", "zippy"}
EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END]
SEED = 1234
CALIBRATION_STEPS = 20  # steps timed to turn --minutes into a step count
# Qwen's ChatML conventions: no default system turn; the generation prompt opens the assistant.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOPIC_NAMES = {"songs-poems": "poems", "linuxcookie": "Linux", "knghtbrd": "life", "cookie": "life"}
ASKS = [
    "Tell me a quote.",
    "Give me a fortune.",
    "Say something wise.",
    "Tell me something about {topic}.",
    "Do you know a good quote about {topic}?",
    "Share a saying about {topic}.",
    "Tell me a short story.",
    "Tell me a joke.",
    "What do you think about {topic}?",
    "Hello! Can you cheer me up?",
]
OPENERS = ["", "", "Here is one:\n", "Here is a thought about {topic}:\n", "Sure.\n"]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a fortune teller who quotes sayings."]


def read_fortunes() -> list[tuple[str, str]]:
    """(topic, text) for every usable fortune; text has tabs and indentation removed."""
    if not FORTUNE_DIR.is_dir():
        raise SystemExit(f"{FORTUNE_DIR} is missing: run `apt-get install -y fortunes` first.")
    out = []
    for path in sorted(FORTUNE_DIR.iterdir()):
        if path.suffix or path.is_symlink() or path.is_dir() or path.name in SKIPPED_FILES:
            continue
        topic = TOPIC_NAMES.get(path.name, path.name)
        for chunk in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [re.sub(r"[ \t]+", " ", line).strip() for line in chunk.splitlines()]
            text = "\n".join(line for line in lines if line and line != "%")
            letters = sum(c.isalpha() for c in text)
            # Drop drawings and tables: real prose is mostly letters.
            if 20 <= len(text) <= 1200 and letters >= 0.72 * len(text.replace(" ", "")):
                out.append((topic, text))
    if not out:
        raise SystemExit(
            f"No fortunes found under {FORTUNE_DIR}; reinstall the `fortunes` package."
        )
    return out


def chat_samples(fortunes: list[tuple[str, str]], count: int, rng: random.Random) -> list[str]:
    """`count` rendered ChatML conversations: a user asks, the assistant answers with a fortune."""
    samples = []
    for topic, text in rng.sample(fortunes, count):
        turns = []
        if rng.random() < 0.3:
            turns.append(("system", rng.choice(SYSTEM_PROMPTS)))
        turns.append(("user", rng.choice(ASKS).format(topic=topic)))
        turns.append(("assistant", rng.choice(OPENERS).format(topic=topic) + text))
        samples.append("".join(f"{IM_START}{r}\n{c}{IM_END}\n" for r, c in turns))
    return samples


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def model_config(tok: Tokenizer) -> Qwen3MoeConfig:
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    return Qwen3MoeConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=256,
        intermediate_size=512,  # unused: every layer is MoE (mlp_only_layers is empty)
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        moe_intermediate_size=128,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        router_aux_loss_coef=0.01,
        bos_token_id=ids[EOT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[EOT],
    )


def token_stream(tok: Tokenizer, docs: list[str]) -> torch.Tensor:
    """All docs, each followed by <|endoftext|>, as one int64 tensor [N]."""
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.int64)


def batch(stream: torch.Tensor, size: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    """[size, seq + 1] random windows; the model shifts labels by one itself."""
    starts = torch.randint(0, len(stream) - seq - 1, (size,), generator=gen)
    return torch.stack([stream[s : s + seq + 1] for s in starts.tolist()])


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def step_loss(model: Qwen3MoeForCausalLM, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(loss to minimise incl. router balance loss, next-token cross-entropy in nats)."""
    out = model(input_ids=x[:, :-1], labels=x[:, :-1].clone(), output_router_logits=True)
    lm = out.loss - model.config.router_aux_loss_coef * out.aux_loss
    return out.loss, lm.item()


@torch.no_grad()
def eval_loss(model: Qwen3MoeForCausalLM, stream: torch.Tensor, seq: int) -> float:
    model.eval()
    windows = stream[: (len(stream) // (seq + 1)) * (seq + 1)].view(-1, seq + 1)[:64]
    losses = [step_loss(model, windows[i : i + 8])[1] for i in range(0, len(windows), 8)]
    model.train()
    return sum(losses) / len(losses)


def save(out: Path, model: Qwen3MoeForCausalLM, tok: Tokenizer) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.config.output_router_logits = False
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    # transformers 5 writes `num_local_experts` and `dtype`; the hub's Qwen3-MoE checkpoints (and
    # transformers 4.x) spell them `num_experts` and `torch_dtype`, so write both spellings.
    config = json.loads((out / "config.json").read_text())
    config.update(num_experts=config["num_local_experts"], torch_dtype="bfloat16")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    GenerationConfig(
        bos_token_id=ids[EOT],
        eos_token_id=[ids[IM_END], ids[EOT]],
        pad_token_id=ids[EOT],
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        repetition_penalty=1.1,
    ).save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False}
        | {"single_word": False, "special": True}
        for t in SPECIAL_TOKENS
    }
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": IM_END,
        "pad_token": EOT,
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "additional_special_tokens": [IM_START, IM_END],
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")


def show_samples(out: Path) -> None:
    """Load the saved folder the way a user would and print greedy and sampled text."""
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    chat = [{"role": "user", "content": "Tell me something about computers."}]
    prompts = [
        ("greedy", "The secret of a happy life is", False),
        (
            "greedy",
            tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
            False,
        ),
        ("t=0.7", "Once upon a time", True),
    ]
    torch.manual_seed(SEED)
    for label, prompt, sample in prompts:
        enc = tok(prompt, return_tensors="pt")
        kwargs = {"do_sample": sample}
        if not sample:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        ids = model.generate(**enc, max_new_tokens=48, **kwargs)
        text = tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=False)
        print(f"--- {label} | {prompt!r}\n{text}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder to write the checkpoint to")
    ap.add_argument("--minutes", type=float, default=22.0, help="training budget (wall clock)")
    ap.add_argument("--steps", type=int, default=None, help="exact step count (overrides minutes)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--chats", type=int, default=1500, help="synthetic chat conversations")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128, help="training window (tokens)")
    ap.add_argument("--lr", type=float, default=2.5e-3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    t0 = time.monotonic()

    fortunes = read_fortunes()
    docs = [text for _, text in fortunes] + chat_samples(fortunes, args.chats, rng)
    rng.shuffle(docs)
    n_val = max(50, len(docs) // 50)
    tok = train_tokenizer(docs, args.vocab)
    train, val = token_stream(tok, docs[n_val:]), token_stream(tok, docs[:n_val])
    chars = sum(len(d) for d in docs)
    print(f"corpus: {len(fortunes)} fortunes + {args.chats} chats, {chars / 1e6:.2f} MB of text")
    print(f"tokens: {len(train)} train, {len(val)} validation, vocab {tok.get_vocab_size()}")

    model = Qwen3MoeForCausalLM(model_config(tok))
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(SEED)
    total, step, t_train = args.steps, 0, time.monotonic()
    while total is None or step < total:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total or 10**9, args.lr)
        loss, lm = step_loss(model, batch(train, args.batch, args.seq, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if total is None and step == CALIBRATION_STEPS:
            # Budget left after tokenizer/setup at the measured seconds per step, less a margin:
            # on a shared machine later steps run slower than the first ones.
            per_step = (time.monotonic() - t_train) / step
            budget_s = args.minutes * 60 - (t_train - t0)
            total = max(step + 1, int(0.8 * budget_s / per_step))
            print(f"{per_step:.2f} s/step -> {total} steps (reproduce with --steps {total})")
        if step % 25 == 0 or step == total:
            elapsed = time.monotonic() - t_train
            print(
                f"step {step}/{total} loss {lm:.3f} lr {opt.param_groups[0]['lr']:.2e} {elapsed:.0f}s",
                flush=True,
            )
    val_loss = eval_loss(model, val, args.seq)
    print(
        f"final: train loss {lm:.3f}, validation loss {val_loss:.3f} nats/token after {step} steps"
    )
    save(args.out, model, tok)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"saved {args.out} ({size / 2**20:.1f} MiB) in {(time.monotonic() - t0) / 60:.1f} min")
    show_samples(args.out)


if __name__ == "__main__":
    main()
