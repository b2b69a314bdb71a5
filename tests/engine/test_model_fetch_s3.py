"""`lamina fetch-model s3://...` against moto's S3 server (a real HTTP server on a free port),
with credentials and endpoint from the environment as the init container gets them: the files
arrive byte for byte and load, a second run downloads nothing, a partial file resumes, and a
missing bucket or prefix, a body cut short in transit and a folder without config.json each end
with exit 1 and one line saying what to do.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from lamina_engine.models import load_checkpoint

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server")
BUCKET = "models"


@pytest.fixture
def s3_url():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class TruncatingProxy:
    """Forwards to `upstream`; a GET whose path ends with a name in `truncate` gets the full
    Content-Length but only half the body before the connection closes."""

    def __init__(self, upstream: str):
        self.truncate: set[str] = set()
        proxy, target = self, upstream.removeprefix("http://")

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(target, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "server", "date"):
                        self.send_header(name, value)
                self.send_header("Connection", "close")
                self.end_headers()
                cut = self.command == "GET" and self.path.split("?")[0].endswith(
                    tuple(proxy.truncate) or ("\0",)
                )
                self.wfile.write(data[: len(data) // 2] if cut else data)
                self.close_connection = True

            do_GET = do_PUT = do_HEAD = do_POST = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def checkpoint(tmp_path, make_checkpoint, s3_url):
    """A sharded random Qwen3-MoE uploaded under s3://models/qwen/tiny/."""
    folder = make_checkpoint(tmp_path, "qwen3_moe", seed=7, max_shard_size="30KB")
    client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="qwen/tiny/", Body=b"")  # a console's folder marker
    for path in folder.iterdir():
        client.put_object(Bucket=BUCKET, Key=f"qwen/tiny/{path.name}", Body=path.read_bytes())
    client.put_object(Bucket=BUCKET, Key="docs/README.md", Body=b"no weights here\n")
    return folder


def env_for(url: str, tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**clean, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_ENDPOINT_URL_S3": url, "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(tmp_path / "none"), "NO_PROXY": "127.0.0.1"}  # fmt: skip


def fetch(source: str, dest: Path, url: str) -> subprocess.CompletedProcess:
    log = dest.parent / "termination-log"
    log.unlink(missing_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "lamina_engine.cli", "fetch-model", source, str(dest),
         "--termination-log", str(log)],
        env=env_for(url, dest.parent), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def failure(proc: subprocess.CompletedProcess, dest: Path) -> str:
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert (dest.parent / "termination-log").read_text() == line + "\n"
    return line


def test_fetch_downloads_loads_and_a_second_run_downloads_nothing(checkpoint, s3_url, tmp_path):
    dest = tmp_path / "ckpt"
    proc = fetch(f"s3://{BUCKET}/qwen/tiny", dest, s3_url)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in checkpoint.iterdir())
    assert f"{len(files)} files, {len(files)} downloaded" in proc.stdout
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == files
    assert all((dest / n).read_bytes() == (checkpoint / n).read_bytes() for n in files)
    _, want = load_checkpoint(checkpoint)
    _, got = load_checkpoint(dest)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    mtimes = {n: (dest / n).stat().st_mtime_ns for n in files}
    again = fetch(f"s3://{BUCKET}/qwen/tiny/", dest, s3_url)
    assert again.returncode == 0 and f"0 downloaded (0 bytes), {len(files)} already" in again.stdout
    assert mtimes == {n: (dest / n).stat().st_mtime_ns for n in files}


def test_a_partial_file_resumes_where_it_stopped(checkpoint, s3_url, tmp_path):
    dest = tmp_path / "ckpt"
    dest.mkdir()
    shard = sorted(checkpoint.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    (dest / f"{shard.name}.part").write_bytes(data[:1000])
    proc = fetch(f"s3://{BUCKET}/qwen/tiny", dest, s3_url)
    assert proc.returncode == 0, proc.stderr
    total = sum(p.stat().st_size for p in checkpoint.iterdir())
    assert f"({total - 1000} bytes)" in proc.stdout
    assert (dest / shard.name).read_bytes() == data


def test_a_body_cut_short_fails_then_resumes(checkpoint, s3_url, tmp_path):
    proxy = TruncatingProxy(s3_url)
    try:
        shard = sorted(checkpoint.glob("*.safetensors"))[1]
        proxy.truncate.add(shard.name)
        dest = tmp_path / "ckpt"
        line = failure(fetch(f"s3://{BUCKET}/qwen/tiny", dest, proxy.url), dest)
        size = shard.stat().st_size
        assert (
            f"s3://{BUCKET}/qwen/tiny/{shard.name} arrived truncated ({size // 2} of {size}" in line
        )
        assert "run again to resume" in line
        proxy.truncate.clear()
        proc = fetch(f"s3://{BUCKET}/qwen/tiny", dest, proxy.url)
        assert proc.returncode == 0, proc.stderr
        assert (dest / shard.name).read_bytes() == shard.read_bytes()
    finally:
        proxy.close()


def test_missing_bucket(s3_url, tmp_path):
    dest = tmp_path / "ckpt"
    line = failure(fetch("s3://no-such-bucket/qwen", dest, s3_url), dest)
    assert "bucket 'no-such-bucket' does not exist at http://127.0.0.1:" in line


def test_missing_prefix(checkpoint, s3_url, tmp_path):
    dest = tmp_path / "ckpt"
    line = failure(fetch(f"s3://{BUCKET}/qwen/huge", dest, s3_url), dest)
    assert f"no objects under s3://{BUCKET}/qwen/huge/" in line


def test_a_prefix_without_config_json_is_refused(checkpoint, s3_url, tmp_path):
    dest = tmp_path / "ckpt"
    line = failure(fetch(f"s3://{BUCKET}/docs", dest, s3_url), dest)
    assert f"s3://{BUCKET}/docs holds no config.json (found: README.md)" in line
