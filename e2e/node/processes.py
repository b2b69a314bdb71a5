"""The run's daemons: started detached (they outlive `cluster-up`), stopped by their recorded pid.

Each daemon gets `pids/<name>.pid` (pid and the executable it must be) and `logs/<name>.log` in
the run's folder. Stopping checks that the pid still runs that executable before signalling, so
a recycled pid is never killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class DaemonError(RuntimeError):
    pass


def spawn(root: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "pids").mkdir(parents=True, exist_ok=True)
    with open(root / "logs" / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
    (root / "pids" / f"{name}.pid").write_text(f"{proc.pid} {os.path.basename(argv[0])}\n")
    return proc.pid


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is(pid: int, exe: str) -> bool:
    # A Python script runs as "python .../dns_shim.py": match the executable or the script.
    if any(os.path.basename(a) == exe for a in _cmdline(pid)[:2]):
        return True
    # /proc/PID/cmdline can read empty for a moment on a loaded machine; the exe link cannot.
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == exe
    except OSError:
        return False


def recorded(root: Path, name: str) -> tuple[int, str] | None:
    f = root / "pids" / f"{name}.pid"
    if not f.exists():
        return None
    pid, exe = f.read_text().split()
    return int(pid), exe


def alive(root: Path, name: str) -> bool:
    rec = recorded(root, name)
    return rec is not None and _is(*rec)


def check_alive(root: Path, names: list[str]) -> None:
    for name in names:
        if not alive(root, name) and not (time.sleep(0.5) or alive(root, name)):
            raise DaemonError(f"{name} exited; its log ends:\n{log_tail(root, name)}")


def log_tail(root: Path, name: str, chars: int = 2500) -> str:
    log = root / "logs" / f"{name}.log"
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def kill_pid(pid: int, exe: str, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds, only while `pid` still runs `exe`."""
    if not _is(pid, exe):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _is(pid, exe) or _zombie(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(50):
        if not _is(pid, exe) or _zombie(pid):
            return
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop(root: Path, name: str, grace: float = 10.0) -> None:
    rec = recorded(root, name)
    if rec is not None:
        kill_pid(*rec, grace=grace)


def pids_mentioning(text: str, exe: str) -> list[int]:
    """Pids of `exe` processes whose command line contains `text` (containerd's shims of this
    run carry its socket path; they detach from containerd, so no pid file names them)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = _cmdline(int(entry))
            if argv and os.path.basename(argv[0]) == exe and any(text in a for a in argv):
                found.append(int(entry))
    return found
