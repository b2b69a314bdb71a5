"""A throwaway `redis-server` on a free loopback port, for tests and benchmarks.

Never the machine's shared Redis on 6379: each server gets its own port, no persistence, and is
stopped (or killed, to simulate an outage) by the test that started it. Load this module from a
test file with `load_redis_fixture()` in that file (pytest's importlib mode forbids sibling
imports).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_available() -> bool:
    return Path(REDIS_SERVER).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI, EC keys: fast)."""
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr, ext = (folder / n for n in ("server.crt", "server.key", "server.csr", "san"))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=test-ca"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return ca, cert, key


class RedisServer:
    """`with RedisServer(password=...) as server:` -> server.url, server.port; kill() for outages."""

    def __init__(
        self,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.password = password
        self.tls = tls  # (ca, cert, key) from make_tls_files: serve TLS only, on `port`
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 5.0) -> RedisServer:
        for _ in range(3):  # the free port can be taken between probing and binding: retry
            self.port = _free_port()
            args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--protected-mode", "no", *self.extra_args]  # fmt: skip
            if self.password:
                args += ["--requirepass", self.password]
            if self.tls:
                ca, cert, key = self.tls
                args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
                args += ["--tls-ca-cert-file", str(ca), "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key), "--tls-auth-clients", "no"]  # fmt: skip
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            end = time.monotonic() + timeout_s
            while time.monotonic() < end and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return self
                except OSError:
                    time.sleep(0.01)
            self.stop()
        raise RuntimeError(f"redis-server did not start on a free port ({REDIS_SERVER})")

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crashed pod."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
