"""`lamina generate` on the shipped demo model, its errors, and the settings vocabulary that
`lamina generate` and `lamina serve` derive from EngineConfig and ServeConfig."""

import argparse
import typing
from typing import Literal

import pytest

from lamina_engine.cli import build_parser, engine_config, main
from lamina_engine.config import EngineConfig, SchedulingPolicy
from lamina_engine.core.scheduler import POLICIES
from lamina_engine.flags import SettingsError, add_flags, build, settings
from lamina_engine.serving.config import ServeConfig, add_serve_args, config_from


def test_generate_on_demo_model_prints_the_completion(capsys):
    rc = main(["generate", "The secret of a happy life is", "--max-tokens", "12"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out.startswith("The secret of a happy life is")
    assert len(out.split()) > 7  # the prompt plus generated words
    assert "tokens in" in err


def test_generate_chat_stops_on_its_own(capsys):
    rc = main(
        [
            "generate",
            "--chat",
            "Tell me a story",
            "--max-tokens",
            "80",
            "--seed",
            "1",
            "--temperature",
            "0.7",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0 and out.strip()
    assert "<|im_start|>" not in out


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    rc = main(["generate", "hi", "--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err


def test_invalid_sampling_value_is_a_clear_error(capsys):
    rc = main(["generate", "hi", "--temperature", "-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "temperature" in err


# ---- one settings vocabulary: flags and LAMINA_* variables derived from the config models ----


def _serve_parser():
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    return parser


def test_every_setting_is_one_flag_and_one_variable_of_the_same_name():
    serve_flags = {opt for a in _serve_parser()._actions for opt in a.option_strings}
    engine = {s.name for s in settings(EngineConfig)}
    for s in settings(ServeConfig):
        assert s.flag == "--" + s.name.replace("_", "-") and s.env == "LAMINA_" + s.name.upper()
        secret = s.name in ("kv_redis_password", "api_key", "internal_key")  # variables only
        assert (s.flag in serve_flags) == (not secret), s.name
    assert engine <= {s.name for s in settings(ServeConfig)}  # the whole EngineConfig, flat
    assert {"speed_prefill_layers", "speed_anchors", "scheduling_policy"} <= engine
    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    generate_flags = {opt for a in generate._actions for opt in a.option_strings}
    assert {s.flag for s in settings(EngineConfig) if s.name != "seed"} <= generate_flags


def test_a_flag_and_its_variable_mean_the_same():
    as_flags = config_from(
        _serve_parser().parse_args(
            ["--speed-prefill-layers", "1.0", "--no-enable-prefix-caching", "--max-num-seqs", "8"]
        ),
        {},
    )
    env = {"LAMINA_SPEED_PREFILL_LAYERS": "1.0", "LAMINA_ENABLE_PREFIX_CACHING": "false",
           "LAMINA_MAX_NUM_SEQS": "8"}  # fmt: skip
    as_env = config_from(_serve_parser().parse_args([]), env)
    assert as_flags == as_env
    # "1.0" is the fraction 1.0 (every layer), never the count 1
    assert as_env.engine.speed.prefill_layers == 1.0
    assert isinstance(as_env.engine.speed.prefill_layers, float)
    assert as_env.engine.enable_prefix_caching is False


def test_earlier_flag_names_still_work():
    args = build_parser().parse_args(["generate", "hi", "--model", "m", "--scheduler", "layered"])
    assert engine_config(args).scheduling_policy == "layered"
    served = config_from(_serve_parser().parse_args(["--scheduler", "layered"]), {})
    assert served.engine.scheduling_policy == "layered"


def test_scheduling_policy_choices_are_the_scheduler_registry():
    assert sorted(typing.get_args(SchedulingPolicy)) == sorted(POLICIES)


def test_a_new_engine_setting_is_one_field():
    class WithKernels(EngineConfig):
        kernels: Literal["auto", "triton", "torch"] = "auto"  # the one line

    parser = argparse.ArgumentParser()
    add_flags(parser, WithKernels)
    assert (
        build(WithKernels, parser.parse_args(["--kernels", "torch", "--model", "m"]), {}).kernels
        == "torch"
    )
    got = build(
        WithKernels, parser.parse_args([]), {"LAMINA_KERNELS": "triton", "LAMINA_MODEL": "m"}
    )
    assert got.kernels == "triton"
    with pytest.raises(SettingsError, match="--kernels / LAMINA_KERNELS"):
        build(WithKernels, parser.parse_args([]), {"LAMINA_KERNELS": "cuda", "LAMINA_MODEL": "m"})


def test_bad_settings_name_the_flag_and_variable(capsys):
    rc = main(["generate", "hi", "--max-num-seqs", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--max-num-seqs / LAMINA_MAX_NUM_SEQS" in err and "greater than" in err
    rc = main(["generate", "hi", "--max-num-seqs", "1024"])
    assert (
        rc == 2
        and "max_num_batched_tokens (512) must be >= max_num_seqs" in capsys.readouterr().err
    )
    with pytest.raises(SettingsError, match="LAMINA_BLOCK_SIZE='16k': expected an int"):
        config_from(_serve_parser().parse_args([]), {"LAMINA_BLOCK_SIZE": "16k"})
    with pytest.raises(SettingsError, match="--speed-prefill-layers / LAMINA_SPEED_PREFILL_LAYERS"):
        config_from(_serve_parser().parse_args([]), {"LAMINA_SPEED_ANCHORS": "2"})


def test_a_source_the_engine_cannot_fetch_is_refused_before_loading(capsys):
    rc = main(["generate", "hi", "--model", "hf://Qwen/Qwen3-30B-A3B"])
    err = capsys.readouterr().err
    assert rc == 2 and "hf:// source, but --model loads a local folder" in err
    assert "lamina fetch-model hf://Qwen/Qwen3-30B-A3B DIR" in err


def test_a_variable_lamina_serve_does_not_read_is_named_in_a_warning(caplog):
    env = {"LAMINA_TOKEN_BUDGET": "256", "LAMINA_NOT_A_SETTING": "1", "LAMINA_MAX_NUM_SEQS": "4"}
    with caplog.at_level("WARNING", logger="lamina_engine.serving.config"):
        cfg = config_from(_serve_parser().parse_args([]), env)
    assert cfg.engine.max_num_seqs == 4 and cfg.engine.max_num_batched_tokens == 512
    warned = " | ".join(r.getMessage() for r in caplog.records)
    assert "LAMINA_TOKEN_BUDGET is not a setting" in warned
    assert "now LAMINA_MAX_NUM_BATCHED_TOKENS" in warned and "LAMINA_NOT_A_SETTING" in warned
    assert "LAMINA_MAX_NUM_SEQS" not in warned
