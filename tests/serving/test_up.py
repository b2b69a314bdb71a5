"""`lamina up` as a user runs it: processes start, the printed curl works, SIGINT stops all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _sigint_as_in_a_terminal() -> None:
    """Runs in the child before exec. Ctrl-C reaches `lamina up` in a terminal, but a test run
    started in the background by a shell without job control passes SIGINT on as ignored, and
    Python then never raises KeyboardInterrupt: give the child SIGINT's default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
        preexec_fn=_sigint_as_in_a_terminal,
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
