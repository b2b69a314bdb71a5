"""Launch configs come from configs/*.json: nearest token count, device entry, default."""

from __future__ import annotations

import json

import torch

from lamina_engine.kernels import launch_config as lc


def test_every_config_file_has_default_and_interpreter_tables():
    for path in sorted(lc.CONFIG_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        assert data["about"] and data["default"] and data["interpreter"], path.name
        for table in (data["default"], data["interpreter"]):
            assert all(key.isdigit() for key in table), path.name


def test_nearest_token_count_and_device_fallback(monkeypatch, tmp_path):
    (tmp_path / "k.json").write_text(
        json.dumps(
            {
                "about": "test",
                "default": {"1": {"B": 16}, "64": {"B": 32}, "4096": {"B": 128}},
                "interpreter": {"1": {"B": 8}},
                "NVIDIA H200": {"E=128": {"1": {"B": 64}}},
            }
        )
    )
    monkeypatch.setattr(lc, "CONFIG_DIR", tmp_path)
    lc._load.cache_clear()
    monkeypatch.setattr(lc, "device_name", lambda device: "NVIDIA H100")
    cuda = torch.device("cuda")
    assert lc.launch_config("k", cuda, "E=128", 40) == {"B": 32}  # no H100 entry: default
    assert lc.launch_config("k", cuda, "E=128", 3000) == {"B": 128}
    monkeypatch.setattr(lc, "device_name", lambda device: "NVIDIA H200")
    assert lc.launch_config("k", cuda, "E=128", 5000) == {"B": 64}  # measured entry wins
    assert lc.launch_config("k", cuda, "E=64", 1) == {"B": 16}  # other shape: default
    assert lc.launch_config("k", torch.device("cpu"), "E=128", 64) == {"B": 8}
    lc._load.cache_clear()
