"""Supervisor: the processes of `lamina up`, kept running the way a kubelet keeps a pod's.

    Child       one process: its name, command line, environment, the ports it binds, and
                the URL that answers 200 once it serves; it serves when it listens on its
                ports itself (psutil: another process on the port never counts) and that URL
                answers
    Supervisor  start()       refuses ports already in use (PortInUse), then spawns every child
                wait_ready()  until every child serves; a child that exits first is an error
                watch()       a child that exits is restarted after 1 s, 2 s, 4 s, ... (at most
                              BACKOFF_CAP_S; back to 1 s once it ran BACKOFF_RESET_S), and every
                              exit, restart and recovery is printed; the others keep serving
                stop()        SIGTERM to each child by pid, newest first (an engine drains), then
                              SIGKILL what is left after the grace time

Children run in their own session, so a Ctrl-C reaches the supervisor alone and it stops them
in order; on Linux each child also gets SIGTERM if the supervisor itself dies (PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import errno
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import httpx
import psutil

BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 30.0  # a kubelet caps at 5 min; a stack on a laptop should come back sooner
BACKOFF_RESET_S = 60.0  # up this long: the next crash starts the backoff from 1 s again
PR_SET_PDEATHSIG = 1


class PortInUse(RuntimeError):
    """A port a child must bind is taken by another process."""


class ChildFailed(RuntimeError):
    """A child exited, or did not serve in time, before the stack was up."""


def exit_text(code: int) -> str:
    """`exited with status 1` or `was killed by SIGKILL`: what a Popen return code means."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def backoff_s(restarts: int) -> float:
    """Delay before restart number `restarts` (1, 2, ...): 1 s, 2 s, 4 s, ... capped."""
    return min(BACKOFF_CAP_S, BACKOFF_START_S * 2 ** max(0, restarts - 1))


def port_free(host: str, port: int) -> bool:
    """Whether `port` can be bound on `host` now (SO_REUSEADDR, as uvicorn and redis bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def listening(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds a listening TCP socket on `port`, so another server
    on that port never counts. Where the OS will not say (psutil: access denied), whether the
    port accepts."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:  # gone
        return False
    except psutil.AccessDenied:
        return _accepts("127.0.0.1", port)
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: Ctrl-C and stop() still end the children
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    ports: tuple[int, ...]  # every port it binds on `host` once it serves
    health: str | None = None  # a URL that answers 200 once it serves
    host: str = "127.0.0.1"
    env: dict[str, str] | None = None  # the whole environment (None: the supervisor's)
    quiet: bool = False  # drop its stdout
    proc: subprocess.Popen | None = field(default=None, repr=False)
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None  # while it is down: when it is started again
    serving: bool = False

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def spawn(self) -> None:
        out = subprocess.DEVNULL if self.quiet else None
        self.proc = subprocess.Popen(
            self.argv, stdout=out, env=self.env, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )  # fmt: skip
        self.started_at, self.restart_at, self.serving = time.monotonic(), None, False

    def probe(self) -> bool:
        """Serving: alive, listening itself on every port, and the health URL (if any)
        answers 200."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        if not all(listening(self.proc.pid, p) for p in self.ports):
            return False
        if self.health is None:
            return True
        try:
            return httpx.get(self.health, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class Supervisor:
    def __init__(self, children: list[Child], out: TextIO | None = None) -> None:
        self.children = children
        self.out = out or sys.stderr

    def say(self, message: str) -> None:
        print(f"lamina up: {message}", file=self.out, flush=True)

    def start(self) -> None:
        """Spawn every child, in order; PortInUse (nothing spawned) if a port is taken."""
        for child in self.children:
            for port in child.ports:
                if not port_free(child.host, port):
                    raise PortInUse(
                        f"port {port} on {child.host} ({child.name}) is in use by another "
                        f"process; stop it or choose another port (`ss -ltnp 'sport = :{port}'` "
                        "shows who holds it)"
                    )
        for child in self.children:
            child.spawn()
            ports = ", ".join(str(p) for p in child.ports)
            self.say(f"started {child.name} (pid {child.pid}, ports {ports})")

    def wait_ready(self, timeout_s: float) -> None:
        """Until every child serves; ChildFailed if one exits or the time runs out."""
        end = time.monotonic() + timeout_s
        while True:
            for child in self.children:
                code = child.proc.poll()
                if code is not None:
                    raise ChildFailed(
                        f"{child.name} (pid {child.pid}) {exit_text(code)} before it was "
                        "serving; see its log above"
                    )
                if not child.serving:
                    child.serving = child.probe()
            if all(c.serving for c in self.children):
                return
            if time.monotonic() > end:
                waiting = [c.name for c in self.children if not c.serving]
                raise ChildFailed(f"{', '.join(waiting)} not serving after {timeout_s:.0f} s")
            time.sleep(0.25)

    def watch_once(self) -> None:
        """One look at every child: note exits, restart those whose backoff is over, and say
        when a restarted one serves again."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    child.spawn()
                    self.say(f"restarted {child.name} (pid {child.pid}, restart {child.restarts})")
                continue
            code = child.proc.poll()
            if code is None:
                if not child.serving and child.probe():
                    child.serving = True
                    self.say(f"{child.name} is serving again (restart {child.restarts})")
                continue
            if now - child.started_at >= BACKOFF_RESET_S:
                child.restarts = 0  # it ran long enough: a new crash is a new story
            delay = backoff_s(child.restarts + 1)
            child.restart_at, child.serving = now + delay, False
            self.say(
                f"{child.name} (pid {child.pid}) {exit_text(code)}; restart "
                f"{child.restarts + 1} in {delay:.0f} s (the others keep serving)"
            )

    def watch(self, poll_s: float = 0.25) -> None:
        """Supervise until interrupted (KeyboardInterrupt: the caller stops the children)."""
        while True:
            self.watch_once()
            time.sleep(poll_s)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM each running child by pid, newest first; SIGKILL what outlives `grace_s`."""
        running = [c for c in reversed(self.children) if c.proc and c.proc.poll() is None]
        for child in running:
            child.proc.terminate()
        end = time.monotonic() + grace_s
        for child in running:
            try:
                child.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} (pid {child.pid}) did not stop in {grace_s:.0f} s: kill")
                child.proc.kill()
                child.proc.wait()
