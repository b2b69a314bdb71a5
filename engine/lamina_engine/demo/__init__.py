"""The tiny Qwen3-MoE checkpoint that ships inside Lamina, so `lamina up` and `lamina generate`
work with no download. What it is and how it was trained: README.md beside this file."""

from __future__ import annotations

from pathlib import Path

# The files a loader needs; generation_config.json is optional for HF-format checkpoints.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def demo_model_path() -> Path:
    """The folder of the shipped demo checkpoint (HF format: config, safetensors, tokenizer)."""
    folder = Path(__file__).resolve().parent / "model"
    missing = [name for name in _REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The demo model folder {folder} lacks {', '.join(missing)}. Reinstall lamina, or "
            "rebuild it from a source checkout with `python "
            "scripts/train_demo_model.py --out engine/lamina_engine/demo/model` (needs `apt-get install fortunes`)."
        )
    return folder
