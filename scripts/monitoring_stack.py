"""A real Prometheus scraping `lamina up` and an operator metrics endpoint, under a bounded load.

Used by tests/observability/test_prometheus_stack.py and scripts/render_dashboards.py; not part
of the serving path. Everything it starts it stops (by pid / process group), in a temp dir.

    with MonitoringStack(workdir) as stack:
        stack.load(seconds=12)
        stack.wait_for_scrapes()
        stack.query("sum(rate(lamina_requests_total[1m]))")
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE, DEPLOYMENT = "lamina-demo", "demo"
# `lamina up` engines read LAMINA_* variables: layered prefill with SPEED, so every Lamina-only
# panel has data (the demo model has 4 layers; prompt tokens run 2 of them).
ENGINE_ENV = {
    "LAMINA_SCHEDULING_POLICY": "layered",
    "LAMINA_SPEED": "true",
    "LAMINA_SPEED_PREFILL_LAYERS": "2",
}
WORDS = "the a cat dog ran over hill under tree while river sang old song of stone".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


class MonitoringStack:
    def __init__(self, workdir: Path, ready_timeout_s: float = 240.0) -> None:
        self.workdir = Path(workdir)
        self.ready_timeout_s = ready_timeout_s
        self.procs: list[subprocess.Popen] = []
        self.router = ""
        self.targets: dict[str, str] = {}  # role -> host:port
        self.prometheus = ""

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> MonitoringStack:
        try:
            self._start_lamina()
            self._start_operator_target()
            self._start_prometheus()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for proc in reversed(self.procs):  # each leads its own process group
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def _spawn(self, args: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
        out = open(self.workdir / log, "w")
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                                env=env, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def _start_lamina(self) -> None:
        port = free_port()
        env = dict(os.environ, **ENGINE_ENV)
        up = self._spawn([sys.executable, "-m", "lamina_engine.cli", "up", "--port", str(port)],
                         "lamina-up.log", env)  # fmt: skip
        self.router = f"http://127.0.0.1:{port}"
        end = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < end:
            if up.poll() is not None:
                raise RuntimeError(f"lamina up exited: {self.log('lamina-up.log')[-2000:]}")
            try:
                if httpx.get(f"{self.router}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"lamina up not ready: {self.log('lamina-up.log')[-2000:]}")
        # The engines listen on free ports `lamina up` chose: read them from its children.
        for child in _children(up.pid):
            argv = Path(f"/proc/{child}/cmdline").read_text().split("\0")
            role = _flag(argv, "--role")
            if role:
                self.targets[role] = f"127.0.0.1:{_flag(argv, '--port')}"
        if set(self.targets) != {"router", "prefill", "decode"}:
            raise RuntimeError(f"lamina up runs {sorted(self.targets)}, not router+prefill+decode")

    def _start_operator_target(self) -> None:
        port = free_port()
        script = ROOT / "scripts" / "operator_metrics_target.py"
        self._spawn([sys.executable, str(script), str(port)], "operator.log")
        self.targets["operator"] = f"127.0.0.1:{port}"
        self._wait_http(f"http://127.0.0.1:{port}/metrics", "operator.log")

    def _start_prometheus(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is missing: apt-get install -y prometheus")
        port = free_port()
        engines = [self.targets[r] for r in ("router", "prefill", "decode")]
        config = (
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: lamina\n"
            "    static_configs:\n"
            f"      - targets: {engines}\n"
            f"        labels: {{namespace: {NAMESPACE}, deployment: {DEPLOYMENT}}}\n"
            "  - job_name: lamina-operator\n"
            "    honor_labels: true\n"
            f"    static_configs: [{{targets: ['{self.targets['operator']}']}}]\n"
        )
        (self.workdir / "prometheus.yml").write_text(config)
        self._spawn([binary, f"--config.file={self.workdir / 'prometheus.yml'}",
                     f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{port}"], "prometheus.log")  # fmt: skip
        self.prometheus = f"http://127.0.0.1:{port}"
        self._wait_http(f"{self.prometheus}/-/ready", "prometheus.log")

    def _wait_http(self, url: str, log: str, timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{url} not ready: {self.log(log)[-2000:]}")

    def log(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text() if path.exists() else ""

    # -- load and queries -------------------------------------------------------------------
    def load(self, seconds: float = 12.0, workers: int = 3, seed: int = 0) -> int:
        """Requests for `seconds`: short and long prompts, streamed and not, one unknown model
        (a 404). Returns the number sent."""
        rng = random.Random(seed)
        end = time.monotonic() + seconds

        def one(i: int) -> None:
            n = rng.choice((4, 12, 40, 90))
            body = {"model": "lamina-demo" if i % 17 else "no-such-model",
                    "prompt": " ".join(rng.choice(WORDS) for _ in range(n)),
                    "max_tokens": rng.choice((4, 8, 16)), "stream": i % 2 == 0}  # fmt: skip
            with httpx.stream("POST", f"{self.router}/v1/completions", json=body,
                              timeout=120) as r:  # fmt: skip
                for _ in r.iter_bytes():
                    pass

        sent = 0
        with ThreadPoolExecutor(workers) as pool:
            while time.monotonic() < end:
                list(pool.map(one, range(sent, sent + workers)))
                sent += workers
        return sent

    def wait_for_scrapes(self, seconds: float = 4.0) -> None:
        """Let Prometheus take a few more scrapes, so rate() over 1m has points after the load."""
        time.sleep(seconds)

    def query(self, expr: str, at: float | None = None) -> dict:
        params = {"query": expr} if at is None else {"query": expr, "time": at}
        r = httpx.get(f"{self.prometheus}/api/v1/query", params=params, timeout=30)
        r.raise_for_status()
        return r.json()["data"]

    def query_range(self, expr: str, start: float, end: float, step: float = 2.0) -> dict:
        params = {"query": expr, "start": start, "end": end, "step": step}
        r = httpx.get(f"{self.prometheus}/api/v1/query_range", params=params, timeout=30)
        r.raise_for_status()
        return r.json()["data"]

    def scrape(self, role: str) -> str:
        return httpx.get(f"http://{self.targets[role]}/metrics", timeout=10).text
