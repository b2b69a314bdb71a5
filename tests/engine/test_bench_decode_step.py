"""`python -m lamina_engine.bench.decode_step`: times all-decode steps of the vs-hf model."""

from __future__ import annotations

import re

import pytest

from lamina_engine.bench.decode_step import main


def test_prints_three_passes_of_decode_steps_over_every_sequence(capsys):
    assert main(["--seqs", "2", "--steps", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        found = re.fullmatch(r"decode step, 2 seqs: ([\d.]+) ms CPU, ([\d.]+) ms wall", line)
        assert found and float(found[1]) > 0 and float(found[2]) > 0


def test_refuses_a_batch_it_cannot_build(capsys):
    with pytest.raises(SystemExit):
        main(["--seqs", "0"])
    assert "--seqs must be in [1, 64]" in capsys.readouterr().err
