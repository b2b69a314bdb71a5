"""`lamina up` as a user runs it: processes start, the printed curl works, SIGINT stops all."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


@pytest.mark.slow
def test_lamina_up_serves_and_stops(tiny_model, redis_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina_engine.cli", "up", "--model", str(tiny_model),
         "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
        # SIGINT's default back, as in a terminal (a shell without job control that starts the
        # tests in the background passes it on as ignored, and SIGINT would not stop lamina up).
        preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        lines = []
        end = time.monotonic() + 120
        while time.monotonic() < end:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        text = "".join(lines)
        assert "router + prefill + decode (KV over Redis)" in text, text
        assert f"curl -s http://127.0.0.1:{port}/v1/completions" in text
        body = {"model": "lamina-demo", "prompt": "Once upon a time", "max_tokens": 5}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 5
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
