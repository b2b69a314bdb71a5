"""`lamina fetch-model builtin://lamina-demo DIR` copies the shipped demo checkpoint (what the
operator's init container does on a cluster with no storage), and a source it cannot fetch is
refused with one line, also written to the termination-message file."""

from __future__ import annotations

import pytest

from lamina_engine.cli import main
from lamina_engine.demo import demo_model_path


def test_builtin_demo_is_copied_and_a_second_run_copies_nothing(tmp_path, capsys):
    dest = tmp_path / "models" / "checkpoint"
    assert main(["fetch-model", "builtin://lamina-demo", str(dest)]) == 0
    shipped = sorted(p.name for p in demo_model_path().iterdir() if p.is_file())
    assert sorted(p.name for p in dest.iterdir()) == shipped
    assert all((dest / n).read_bytes() == (demo_model_path() / n).read_bytes() for n in shipped)
    assert f"{len(shipped)} copied" in capsys.readouterr().out
    assert main(["fetch-model", "builtin://lamina-demo", str(dest)]) == 0
    assert "0 copied" in capsys.readouterr().out


@pytest.mark.parametrize(
    "source, message",
    [
        ("builtin://llama", "unknown built-in model 'llama'; built-in models: lamina-demo"),
        ("pvc://claim/path", "is a PersistentVolumeClaim: the operator mounts it"),
        ("hf://just-a-name", "'hf://just-a-name' is malformed; write hf://org/name[@revision]"),
        ("gs://bucket/x", "unknown model source scheme 'gs'"),
        ("/models/qwen", "has no scheme"),
    ],
)
def test_a_source_it_cannot_fetch_is_one_line_in_the_termination_log(
    source, message, tmp_path, capsys
):
    log = tmp_path / "termination-log"
    args = ["fetch-model", source, str(tmp_path / "m"), "--termination-log", str(log)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert log.read_text() == err
