"""The two Dockerfiles, parsed (docker cannot run here): non-root users, no torch in the operator."""

from __future__ import annotations

import json
import re

import pytest
from chart_helpers import REPO

ENGINE = REPO / "Dockerfile.engine"
OPERATOR = REPO / "Dockerfile.operator"


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name} ends inside a continued line"
    return out


def final_stage(path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("path", [ENGINE, OPERATOR], ids=lambda p: p.name)
def test_final_stage_runs_as_a_numeric_non_root_user(path):
    users = [arg for word, arg in final_stage(path) if word == "USER"]
    assert users, f"{path.name}: the final stage sets no USER, so it runs as root"
    user = users[-1].split(":")[0]
    # Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
    assert user.isdigit() and int(user) != 0, f"{path.name}: USER {users[-1]}"


def entrypoint(path) -> list[str]:
    (arg,) = [arg for word, arg in final_stage(path) if word == "ENTRYPOINT"]
    return json.loads(arg)


def test_entrypoints():
    assert entrypoint(ENGINE) == ["lamina"]
    assert entrypoint(OPERATOR) == ["lamina-operator", "run"]


def test_operator_image_installs_the_operator_extra_and_never_the_engine_or_torch():
    runs = " ".join(arg for word, arg in instructions(OPERATOR) if word == "RUN")
    extras = re.findall(r"\.\[([a-z,\s]+)\]", runs)
    assert extras == ["operator"], extras
    assert "torch" not in runs and "triton" not in runs


def test_engine_image_installs_the_engine_extra_and_a_selectable_torch():
    steps = instructions(ENGINE)
    runs = " ".join(arg for word, arg in steps if word == "RUN")
    assert re.findall(r"\.\[([a-z,\s]+)\]", runs) == ["engine"]
    args = {arg.split("=")[0] for word, arg in steps if word == "ARG"}
    assert {"BASE_IMAGE", "TORCH_INDEX_URL"} <= args


def test_engine_user_matches_the_uid_the_operator_puts_in_pod_specs():
    constants = (REPO / "operator" / "lamina_operator" / "constants.py").read_text()
    match = re.search(r"^ENGINE_UID = (\d+)", constants, re.M)
    assert match, "operator/lamina_operator/constants.py must define ENGINE_UID (the pods' runAsUser)"
    users = [arg for word, arg in final_stage(ENGINE) if word == "USER"]
    assert users[-1].split(":")[0] == match.group(1)
