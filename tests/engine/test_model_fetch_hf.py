"""`lamina fetch-model hf://...` against a local Hub (hub_server.py) that serves checkpoints
saved with save_pretrained: the files arrive byte for byte and load; a wrong token, a missing
repo or revision, a truncated file and HF_HUB_OFFLINE each end with exit 1 and one line that
says what to do, also written to the termination-message file the pod status shows.

`lamina` runs as a subprocess, as in the init container: huggingface_hub reads HF_ENDPOINT and
HF_HUB_OFFLINE once, when it is imported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lamina_engine.demo import demo_model_path
from lamina_engine.models import load_checkpoint

TOKEN = "hf_local_test_token"


def _load_hub_server():
    name = "lamina_tests_hub_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("hub_server.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


hs = _load_hub_server()


def lamina(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lamina_engine.cli", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def hub(tmp_path, make_checkpoint):
    """A Hub holding lamina/tiny-moe (a sharded random Qwen3-MoE) that needs TOKEN."""
    folder = make_checkpoint(tmp_path, "qwen3_moe", seed=5, max_shard_size="30KB")
    with hs.LocalHub(token=TOKEN) as hub:
        hub.repos["lamina/tiny-moe"] = hs.HubRepo.from_folder(folder)
        hub.source_folder = folder
        yield hub


@pytest.fixture
def env(hub, tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    return {
        **clean,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def fetch(source: str, dest: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    dest.parent.mkdir(parents=True, exist_ok=True)
    log = dest.parent / "termination-log"
    log.unlink(missing_ok=True)
    return lamina("fetch-model", source, str(dest), "--termination-log", str(log), env=env,
                  cwd=dest.parent)  # fmt: skip


def failure(proc: subprocess.CompletedProcess, dest: Path) -> str:
    """The one-line reason, checked to be the same on stderr and in the termination log."""
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("lamina fetch-model: ")
    assert (dest.parent / "termination-log").read_text() == line + "\n"
    return line


def same_files(a: Path, b: Path) -> None:
    files = sorted(p.name for p in a.iterdir() if p.is_file())
    assert files == sorted(p.name for p in b.iterdir() if p.is_file())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_fetch_downloads_verifies_and_loads(hub, env, tmp_path):
    dest = tmp_path / "models" / "checkpoint"
    proc = fetch("hf://lamina/tiny-moe@main", dest, env)
    assert proc.returncode == 0, proc.stderr
    assert "files verified against the Hub's hashes" in proc.stdout
    same_files(hub.source_folder, dest)
    assert len(list(dest.glob("*.safetensors"))) > 2  # sharded, with its index
    _, want = load_checkpoint(hub.source_folder)
    _, got = load_checkpoint(dest)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # a second run (an init container restarted) downloads nothing
    before = hub.downloads
    assert fetch("hf://lamina/tiny-moe", dest, env).returncode == 0
    assert hub.downloads == before


@pytest.mark.slow  # two `lamina generate` processes: ~30 s on 2 cores
def test_fetched_demo_generates_what_the_shipped_one_does(hub, env, tmp_path):
    hub.repos["lamina/demo"] = hs.HubRepo.from_folder(demo_model_path())
    dest = tmp_path / "demo"
    assert fetch(f"hf://lamina/demo@{hub.repos['lamina/demo'].commit}", dest, env).returncode == 0
    args = ["generate", "The fortune says", "--max-tokens", "12", "--dtype", "float32"]
    shipped = lamina(*args, env=env, cwd=tmp_path)
    fetched = lamina(*args, "--model", str(dest), env=env, cwd=tmp_path)
    assert shipped.returncode == fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == shipped.stdout and len(shipped.stdout) > len("The fortune says")


def test_wrong_token(env, tmp_path):
    dest = tmp_path / "ckpt"
    line = failure(fetch("hf://lamina/tiny-moe", dest, {**env, "HF_TOKEN": "hf_wrong"}), dest)
    assert "refused the token in HF_TOKEN (401 invalid credentials)" in line
    assert "hfTokenSecret" in line


def test_private_repo_without_a_token(env, tmp_path):
    dest = tmp_path / "ckpt"
    no_token = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    line = failure(fetch("hf://lamina/tiny-moe", dest, no_token), dest)
    assert "repository lamina/tiny-moe not found" in line and "HF_TOKEN is not set" in line


def test_missing_repo(env, tmp_path):
    dest = tmp_path / "ckpt"
    line = failure(fetch("hf://lamina/no-such-model", dest, env), dest)
    assert "repository lamina/no-such-model not found on http://127.0.0.1:" in line


def test_missing_revision(env, tmp_path):
    dest = tmp_path / "ckpt"
    line = failure(fetch("hf://lamina/tiny-moe@v9.9", dest, env), dest)
    assert "revision 'v9.9' not found in lamina/tiny-moe" in line


def test_truncated_file_fails_then_resumes(hub, env, tmp_path):
    shard = sorted(p for p in hub.repos["lamina/tiny-moe"].files if p.endswith(".safetensors"))[1]
    size = len(hub.repos["lamina/tiny-moe"].files[shard])
    hub.truncate.add(shard)
    dest = tmp_path / "ckpt"
    line = failure(fetch("hf://lamina/tiny-moe", dest, env), dest)
    assert f"arrived truncated: {size // 2} of {size} bytes" in line and "run again" in line
    hub.truncate.clear()  # the mirror is fixed: the next run completes and verifies
    proc = fetch("hf://lamina/tiny-moe", dest, env)
    assert proc.returncode == 0, proc.stderr
    same_files(hub.source_folder, dest)


def test_offline_mode_uses_only_what_is_there(hub, env, tmp_path):
    dest = tmp_path / "ckpt"
    line = failure(fetch("hf://lamina/tiny-moe", dest, {**env, "HF_HUB_OFFLINE": "1"}), dest)
    assert "HF_HUB_OFFLINE is set" in line and "holds no copy of lamina/tiny-moe" in line
    assert fetch("hf://lamina/tiny-moe", dest, env).returncode == 0
    before = hub.downloads
    proc = fetch("hf://lamina/tiny-moe", dest, {**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0 and "HF_HUB_OFFLINE" in proc.stdout
    assert hub.downloads == before


def test_a_repo_without_config_json_is_refused(hub, env, tmp_path):
    docs = tmp_path / "docs-only"
    docs.mkdir()
    (docs / "README.md").write_text("no weights here\n")
    hub.repos["lamina/docs"] = hs.HubRepo.from_folder(docs)
    dest = tmp_path / "ckpt"
    line = failure(fetch("hf://lamina/docs", dest, env), dest)
    assert "hf://lamina/docs holds no config.json (found: README.md)" in line


def test_a_file_corrupted_on_disk_is_fetched_again(hub, env, tmp_path):
    dest = tmp_path / "ckpt"
    assert fetch("hf://lamina/tiny-moe", dest, env).returncode == 0
    shard = sorted(dest.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte: only a hash sees it
    shard.write_bytes(bytes(data))
    before = hub.downloads
    assert fetch("hf://lamina/tiny-moe", dest, env).returncode == 0
    assert hub.downloads == before + 1
    same_files(hub.source_folder, dest)


def test_bytes_corrupted_in_transit_fail_the_hash_check(hub, env, tmp_path):
    shard = sorted(p for p in hub.repos["lamina/tiny-moe"].files if p.endswith(".safetensors"))[0]
    hub.corrupt.add(shard)  # right size, one wrong byte: only a hash sees it
    dest = tmp_path / "ckpt"
    line = failure(fetch("hf://lamina/tiny-moe", dest, env), dest)
    assert "do not match the Hub's hashes after downloading them twice" in line and shard in line
