"""``mitmflare run --workers N``: N mitmdump workers on private loopback ports, HAProxy in
front on the public port, all serving one pool through Redis (``flare_redis``), and a rolling
restart on ``SIGHUP`` (or ``mitmflare run --reload``).

Redis: the one given (``--set flare_redis=…`` or ``MITMFLARE_REDIS_URL``), else a private
``redis-server`` this command starts on a unix socket in its private folder (no persistence:
workers keep their own state files and resynchronise; it lives and ends with the run).

Rolling restart, one worker at a time: it is set to ``drain`` in HAProxy (its runtime API on a
private socket: no new requests), its requests in flight are awaited (HAProxy's count and the
worker's ``/health``, at most :data:`DRAIN_S`), it is set to ``maint``, stopped (SIGINT), started
again on the same port, awaited until its ``/health`` answers, set ``ready``, and awaited until
HAProxy's checks see it up; then the next. A worker that dies is started again the same way.

Files: the private folder (mode 0700) holds the generated ``haproxy.cfg`` (0600) and the
sockets; logs go to ``mitmflare-worker<i>.log`` and ``mitmflare-balancer.log`` in the working
directory; ``.mitmflare/run.lock`` names this process for ``--reload``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import typer

from . import balancer, lock, startup

DRAIN_S = 600.0          # longest wait for a draining worker's requests in flight (s)
STOP_S = 15.0            # a worker stopped with SIGINT is killed after this (s)
UP_S = 30.0              # longest wait for HAProxy to see a restarted worker up (s)
LOCK = ".mitmflare/run.lock"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_folder() -> Path:
    """A new folder only this user can enter (mode 0700), in ``$XDG_RUNTIME_DIR`` when set."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(tempfile.mkdtemp(prefix="mitmflare-run-",
                                 dir=base if base and os.path.isdir(base) else None))


def missing_tools(need_redis: bool) -> str | None:
    """One line naming what ``--workers`` needs and is not installed, else None."""
    missing = [tool for tool, needed in (("haproxy", True), ("redis-server", need_redis))
               if needed and shutil.which(tool) is None]
    if not missing:
        return None
    return (f"--workers needs {' and '.join(missing)} (apt-get install {' '.join(missing)})"
            + (" or a Redis URL in MITMFLARE_REDIS_URL / --set flare_redis=…"
               if "redis-server" in missing else ""))


def start_redis(folder: Path, spawn: Callable[..., subprocess.Popen]) -> str:
    """Start a private ``redis-server`` on a unix socket in ``folder`` (mode 0600, no TCP, no
    persistence) and return its URL once it answers. Raises RuntimeError after 10 s."""
    sock = folder / "redis.sock"
    proc = spawn(["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm",
                  "600", "--save", "", "--appendonly", "no", "--dir", str(folder)],
                 str(folder / "redis.log"), alone=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(str(sock))
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return f"unix://{sock}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the private redis-server did not start (see {folder}/redis.log)")


class Worker:
    """One mitmdump worker: its name in HAProxy, its loopback port, its process."""

    def __init__(self, index: int) -> None:
        self.name = f"worker{index}"
        self.port = free_port()
        self.log = f"mitmflare-{self.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Supervisor:
    """Starts and restarts the workers and the balancer (see the module docstring).

    ``command(port)``: the mitmdump command line of a worker listening on 127.0.0.1:``port``;
    ``spawn(args, log)``: starts a process whose output goes to file ``log`` (the caller stops
    every process it started)."""

    def __init__(self, count: int, command: Callable[[int], list[str]],
                 spawn: Callable[..., subprocess.Popen], folder: Path) -> None:
        self.workers = [Worker(i) for i in range(1, count + 1)]
        self.command, self.spawn, self.folder = command, spawn, folder
        self.admin = str(folder / "haproxy.sock")
        self.balancer: subprocess.Popen | None = None
        self.restarts = 0

    def start(self, bind: str, url: str) -> str | None:
        """Start every worker, then HAProxy on ``bind``; None once ``url``/health answers
        through it, else why not."""
        for worker in self.workers:
            why = self._start(worker)
            if why is not None:
                return why
        cfg = self.folder / "haproxy.cfg"
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(balancer.config(bind, [(w.name, w.port) for w in self.workers],
                                      self.admin))
        self.balancer = self.spawn(["haproxy", "-db", "-f", str(cfg)], "mitmflare-balancer.log")
        return startup.wait_ready(url, self.balancer)

    def _start(self, worker: Worker) -> str | None:
        worker.proc = self.spawn(self.command(worker.port), worker.log)
        why = startup.wait_ready(worker.url, worker.proc)
        return None if why is None else f"{worker.name}: {why} (log: {worker.log})"

    def watch(self) -> str | None:
        """Start again any worker that ended; why the run must end (HAProxy ended), else
        None."""
        if self.balancer is not None and self.balancer.poll() is not None:
            return f"haproxy ended (status {self.balancer.returncode}; see mitmflare-balancer.log)"
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is not None:
                typer.echo(f"{worker.name} ended (status {worker.proc.returncode}); starting "
                           f"it again", err=True)
                self._replace(worker, drain=False)
        return None

    def roll(self) -> None:
        """Restart the workers one at a time (see the module docstring)."""
        typer.echo(f"Rolling restart of {len(self.workers)} workers", err=True)
        for worker in self.workers:
            self._replace(worker, drain=True)
        typer.echo("Rolling restart done", err=True)

    def _replace(self, worker: Worker, drain: bool) -> None:
        old = worker.proc.pid if worker.proc else None
        try:
            if drain:
                balancer.set_state(self.admin, worker.name, "drain")
                self._wait_idle(worker)
            balancer.set_state(self.admin, worker.name, "maint")
        except OSError as exc:
            typer.echo(f"{worker.name}: haproxy's runtime API: {exc}", err=True)
        _stop(worker.proc)
        why = self._start(worker)
        while why is not None:
            typer.echo(f"{why}; trying again in 1 s", err=True)
            _stop(worker.proc)
            time.sleep(1.0)
            why = self._start(worker)
        try:
            balancer.set_state(self.admin, worker.name, "ready")
            self._wait_up(worker)
        except OSError as exc:
            typer.echo(f"{worker.name}: haproxy's runtime API: {exc}", err=True)
        self.restarts += 1
        new = worker.proc.pid if worker.proc is not None else None
        typer.echo(f"{worker.name} restarted (pid {old} -> {new})", err=True)

    def _wait_idle(self, worker: Worker) -> None:
        """Until HAProxy has no request on ``worker`` and the worker none in flight."""
        import json
        import urllib.request

        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            busy = int(balancer.servers(self.admin).get(worker.name, {}).get("scur") or 0)
            if busy == 0:
                try:
                    with urllib.request.urlopen(worker.url + "/health", timeout=2) as answer:
                        flight = json.loads(answer.read()).get("in_flight") or {}
                    busy = int(flight.get("accounts") or 0) + int(flight.get("users") or 0)
                except (OSError, ValueError):
                    busy = 0  # not answering: nothing more to wait for
            if busy == 0:
                return
            time.sleep(0.1)
        typer.echo(f"{worker.name}: requests still in flight after {DRAIN_S:.0f} s; "
                   f"restarting it anyway", err=True)

    def _wait_up(self, worker: Worker) -> None:
        deadline = time.monotonic() + UP_S
        while time.monotonic() < deadline:
            if balancer.servers(self.admin).get(worker.name, {}).get("status") == "UP":
                return
            time.sleep(0.1)
        typer.echo(f"{worker.name}: haproxy does not see it up after {UP_S:.0f} s", err=True)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(supervisor: Supervisor) -> int:
    """Supervise until SIGINT/SIGTERM (KeyboardInterrupt, raised by the caller's handlers) or
    HAProxy ends; ``SIGHUP`` rolls the workers. Holds :data:`LOCK` meanwhile. The exit code."""
    hup = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    Path(LOCK).parent.mkdir(exist_ok=True)
    try:
        held = lock.take(LOCK, {"workers": len(supervisor.workers)})
    except lock.Held as other:
        typer.echo(f"another mitmflare run --workers from this folder holds {LOCK} "
                   f"({lock.holder_line(other.facts)}); --reload will reach that one", err=True)
        held = None
    try:
        while True:
            if hup.is_set():
                hup.clear()
                supervisor.roll()
            why = supervisor.watch()
            if why is not None:
                typer.echo(why, err=True)
                return 1
            hup.wait(0.5)
    finally:
        if held is not None:
            lock.release(held)


def reload() -> int:
    """Ask the ``mitmflare run --workers`` of this folder for a rolling restart (SIGHUP); the
    exit code (1 with a line on stderr when none runs)."""
    import fcntl
    import json

    try:
        fd = os.open(LOCK, os.O_RDONLY)
    except OSError:
        typer.echo("no mitmflare run --workers is running from this folder", err=True)
        return 1
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: someone runs
            facts = json.loads(os.read(fd, 65536) or b"{}")
        else:
            facts = {}
    except ValueError:
        facts = {}
    finally:
        os.close(fd)
    pid = facts.get("pid") if isinstance(facts, dict) else None
    if not isinstance(pid, int):
        typer.echo("no mitmflare run --workers is running from this folder", err=True)
        return 1
    os.kill(pid, signal.SIGHUP)
    typer.echo(f"asked mitmflare run (pid {pid}) to restart its workers one at a time", err=True)
    return 0
