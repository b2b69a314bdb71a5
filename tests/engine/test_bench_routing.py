"""The skewed-routing benchmark model: its measured expert coverage follows the published curve
(Layered Prefill, Qwen3-30B-A3B: 32 decode tokens -> ~55% of experts, 128 -> ~86%), and the
uniform model beside it does not."""

from __future__ import annotations

import pytest
import torch

from lamina_engine.bench.random_models import make_random_model
from lamina_engine.bench.routing_skew import COVERAGE_TARGET, routing_coverage

pytestmark = pytest.mark.slow  # two 40M-parameter models, a forward of 1,024 tokens each


def _coverage(tmp_path, name: str) -> dict[int, float]:
    from transformers import AutoModelForCausalLM

    folder = make_random_model(name, tmp_path / name, seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return routing_coverage(model, sorted(COVERAGE_TARGET), seed=0, samples=50)


def test_skewed_model_follows_the_published_coverage_curve(tmp_path):
    skewed = _coverage(tmp_path, "moe-bench-skewed")
    for n, target in COVERAGE_TARGET.items():
        assert abs(skewed[n] - target) <= 0.05, (n, skewed[n], target)
    uniform = _coverage(tmp_path, "moe-bench")
    assert uniform[32] > COVERAGE_TARGET[32] + 0.2  # the random router: ~84% at 32 tokens
