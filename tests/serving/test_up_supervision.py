"""`lamina up` keeps its stack serving when one process dies (issue 10 #8), as a user runs it:
a prefill killed with SIGKILL is restarted with backoff and said so, requests succeed
meanwhile (the router sends them to decode, which computes the prompt itself), Ctrl-C stops
every process; a port in use is a clear error, never "Lamina is up"."""

from __future__ import annotations

import functools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Up:
    """`lamina up --model MODEL --port PORT` with its output collected line by line."""

    def __init__(self, model, port: int) -> None:
        self.port, self.lines, self.cond = port, [], threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lamina_engine.cli", "up", "--model", str(model),
             "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            # SIGINT's default back, as in a terminal (a shell without job control that starts the
            # tests in the background passes it on as ignored, and SIGINT would not stop lamina up).
            preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    @property
    def text(self) -> str:
        with self.cond:
            return "".join(self.lines)

    def wait_for(self, needle: str, timeout_s: float) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: needle in "".join(self.lines), timeout_s)
        assert ok, f"{needle!r} not printed in {timeout_s} s:\n{self.text}"

    def pids(self, name: str) -> list[int]:
        """Every pid `name` was started with, in order."""
        return [int(p) for p in re.findall(rf"(?:started|restarted) {name} \(pid (\d+)", self.text)]

    def complete(self) -> httpx.Response:
        body = {"model": "lamina-demo", "prompt": "Once upon a time", "max_tokens": 5,
                "temperature": 0, "ignore_eos": True}  # fmt: skip
        return httpx.post(f"http://127.0.0.1:{self.port}/v1/completions", json=body, timeout=60)

    def kill_all(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_a_killed_prefill_is_restarted_while_requests_succeed(tiny_model, redis_server):
    up = Up(tiny_model, _free_port())
    try:
        up.wait_for("Ctrl-C stops it", 240)
        assert "Lamina is up: router + prefill + decode (KV over Redis)" in up.text
        first = up.complete()
        assert first.status_code == 200, first.text
        answer = first.json()["choices"][0]["text"]
        [prefill] = up.pids("prefill")
        os.kill(prefill, signal.SIGKILL)
        served = []  # while the prefill is down and being restarted
        end = time.monotonic() + 120
        while "prefill is serving again" not in up.text and time.monotonic() < end:
            r = up.complete()
            served.append((r.status_code, r.json()["choices"][0]["text"] if r.is_success else r))
            time.sleep(0.2)
        up.wait_for("prefill is serving again (restart 1)", 1)
        assert served and all(s == (200, answer) for s in served), served
        assert f"prefill (pid {prefill}) was killed by SIGKILL; restart 1 in 1 s" in up.text
        restarted = up.pids("prefill")[1]
        assert restarted != prefill and not _gone(restarted)
        assert up.complete().json()["choices"][0]["text"] == answer
        every = [pid for name in ("redis", "prefill", "decode", "router") for pid in up.pids(name)]
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(60) == 0
        assert all(_gone(pid) for pid in every), up.text
    finally:
        up.kill_all()


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args) -> None:
        pass


def test_a_port_in_use_is_an_error_and_never_up(tiny_model):
    """The router's port is held by another server that answers /health with 200 (an earlier
    `lamina up`, say): an error naming the port, and no "Lamina is up"."""
    other = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    port = other.server_address[1]
    try:
        up = Up(tiny_model, port)
        try:
            code = up.proc.wait(120)
        finally:
            up.kill_all()
    finally:
        other.shutdown()
        other.server_close()
    assert code != 0
    assert f"port {port} on 127.0.0.1 (router) is in use by another process" in up.text
    assert "Lamina is up" not in up.text
    assert "started" not in up.text  # nothing was spawned


def test_a_crashing_child_is_restarted_with_growing_backoff_and_its_sibling_keeps_serving():
    import io

    from lamina_engine.supervisor import Child, Supervisor

    port = _free_port()
    server = Child("web", [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)],
                   (port,), f"http://127.0.0.1:{port}/", quiet=True)  # fmt: skip
    crasher = Child("crasher", [sys.executable, "-c", "import time; time.sleep(0.2); exit(3)"], ())
    out = io.StringIO()
    sup = Supervisor([server, crasher], out)
    sup.start()
    try:
        first = server.pid
        end = time.monotonic() + 30
        while "restart 4 in 8 s" not in out.getvalue() and time.monotonic() < end:
            sup.watch_once()
            time.sleep(0.05)
        text = out.getvalue()
        for n, delay in ((1, 1), (2, 2), (3, 4), (4, 8)):
            assert f"exited with status 3; restart {n} in {delay} s" in text, text
        assert text.count("restarted crasher") == 3
        assert server.pid == first and httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    finally:
        sup.stop()
    assert server.proc.poll() is not None and crasher.proc.poll() is not None
