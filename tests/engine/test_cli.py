"""`lamina generate` on the shipped demo model, and its errors."""

from lamina_engine.cli import main


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
