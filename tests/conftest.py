"""Shared fixtures: the simulated upstream (in-process thread) and real mitmdump processes."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mitmflare.demo.simulator import SimulatedUpstream

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "addons" / "bundle.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")


def pytest_configure(config: pytest.Config) -> None:
    """Create mitmproxy's CA (``~/.mitmproxy``) before any proxy starts, in the one process that
    starts the pytest-xdist workers: on a fresh machine, proxies started side by side (by two
    workers, or by :func:`start_all`) would each write it while another reads it."""
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller did it
        return
    from mitmproxy import options
    from mitmproxy.certs import CertStore
    CertStore.from_store(Path(options.CONF_DIR).expanduser(), options.CONF_BASENAME,
                         options.KEY_SIZE)


@pytest.fixture(scope="session")
def sim_server() -> Iterator[SimulatedUpstream]:
    sim = SimulatedUpstream(chunk_delay_s=0.0)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(sim_server: SimulatedUpstream) -> SimulatedUpstream:
    """The simulated upstream, with no scripts and no recorded requests."""
    sim_server.reset()
    sim_server.chunk_delay_s = 0.0
    return sim_server


def _port_range() -> range:
    """The ports this test process hands out: a slice of its own (one per pytest-xdist worker)
    below the kernel's ephemeral range, where neither outgoing connections nor another
    process's ``bind(0)`` take a port between the test picking it and a server binding it."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    size = 1500
    first = 10000 + size * (int(worker) if worker.isdigit() else 0)
    return range(first, min(first + size, ephemeral))


_PORTS = _port_range()
_next_port = _PORTS.start + os.getpid() % max(len(_PORTS), 1)  # runs in a row start apart


def free_port() -> int:
    """A loopback port free now, not handed out before in this session (while the slice
    lasts), nor by another worker; ``bind(0)`` when there is no slice."""
    global _next_port
    for _ in range(len(_PORTS)):
        port = _next_port
        _next_port = _PORTS.start + (port + 1 - _PORTS.start) % len(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """A running ``mitmdump -s addons/bundle.py`` with its own files in ``tmp``."""

    def __init__(self, tmp: Path, accounts_yaml: str, options: dict[str, str],
                 modes: list[str] | None, tool: str = "mitmdump",
                 scripts: list[Path] | None = None) -> None:
        self.tmp = tmp
        self.accounts = tmp / "accounts.yaml"
        self.db = tmp / "mitmflare.db"
        self.state = tmp / "mitmflare-state.db"
        self.log = tmp / "proxy.log"
        self.port = free_port()
        self.accounts.write_text(textwrap.dedent(accounts_yaml))
        modes = modes or ["reverse:https://anthropic.mitmflare.invalid@127.0.0.1:{port}"]
        self.modes = [m.format(port=self.port) for m in modes]
        self.options = {"flare_accounts": str(self.accounts), "flare_db": str(self.db),
                        "flare_state": str(self.state), "flare_retry_delay_ms": "50",
                        "flow_detail": "0",
                        **options}
        self.db = Path(self.options["flare_db"])
        self.state = Path(self.options["flare_state"])
        self.tool = tool
        self.scripts = scripts or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        """Start the process and wait until its ``/health`` answers."""
        return self.launch().wait_ready()

    def launch(self) -> Proxy:
        """Start the process without waiting for it (:meth:`wait_ready` does)."""
        args = [str(MITMDUMP.with_name(self.tool)), "-s", str(BUNDLE)]
        for script in self.scripts:
            args += ["-s", str(script)]
        for mode in self.modes:
            args += ["--mode", mode]
        for key, value in self.options.items():
            args += ["--set", f"{key}={value}"]
        self.proc = subprocess.Popen(args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     cwd=self.tmp)
        return self

    def wait_ready(self) -> Proxy:
        """Wait (30 s at most) until the launched process answers ``/health``."""
        assert self.proc is not None
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.02)
        raise RuntimeError(f"proxy did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        """Stop the process cleanly and wait for it."""
        self.interrupt()
        self.reap()

    def interrupt(self) -> None:
        """Ask the process to stop (SIGINT: a clean shutdown); :meth:`reap` waits for it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def reap(self) -> None:
        """Wait for the interrupted process (15 s, then SIGKILL)."""
        if self.proc:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> Proxy:
        self.stop()
        return self.start()

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def query(self, sql: str, params: tuple = ()) -> list[dict]:
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, params)]
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def wait_rows(self, count: int, sql: str = "select * from requests order by started_at",
                  timeout: float = 10.0) -> list[dict]:
        """Rows of ``sql`` once there are at least ``count`` of them (the writer is async)."""
        deadline = time.time() + timeout
        rows: list[dict] = []
        while time.time() < deadline:
            rows = self.query(sql)
            if len(rows) >= count:
                return rows
            time.sleep(0.05)
        raise AssertionError(f"expected {count} rows of {sql!r}, got {len(rows)}: {rows}\n"
                             f"{self.log.read_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """Factory: ``proxy(accounts_yaml, **options)`` starts a mitmdump with the bundle."""
    started: list[Proxy] = []

    def start(accounts_yaml: str, modes: list[str] | None = None, tool: str = "mitmdump",
              **options: str) -> Proxy:
        folder = tmp_path / f"proxy{len(started)}"
        folder.mkdir()
        p = Proxy(folder, accounts_yaml, {k: str(v) for k, v in options.items()}, modes, tool)
        started.append(p)
        return p.start()

    yield start
    stop_all(started)


def start_all(proxies: list[Proxy]) -> list[Proxy]:
    """Start ``proxies`` side by side (as ``mitmflare run`` starts its workers) and wait until
    each answers."""
    for p in proxies:
        p.launch()
    for p in proxies:
        p.wait_ready()
    return proxies


def stop_all(proxies: list[Proxy]) -> None:
    """Stop ``proxies`` side by side: interrupt each, then wait for each."""
    for p in proxies:
        p.interrupt()
    for p in proxies:
        p.reap()


def rejected_5h(reset_in: float) -> dict:
    """A 429 of a subscription account whose 5-hour window is spent for ``reset_in`` s."""
    reset = str(int(time.time() + reset_in))
    return {"status": 429, "headers": {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-5h-status": "rejected",
        "anthropic-ratelimit-unified-5h-reset": reset,
        "anthropic-ratelimit-unified-5h-utilization": "1.01",
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d-utilization": "0.69",
        "anthropic-ratelimit-unified-7d-reset": str(int(time.time() + 86400)),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-reset": reset,
        "retry-after": str(int(reset_in)), "x-should-retry": "true"}}


class RedisServer:
    """A real ``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """A real ``redis-server`` for the test module; the test is skipped, saying what to
    install, when there is none."""
    import shutil
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@contextlib.contextmanager
def bundle_parts(folder: Path, yaml: str) -> Iterator[tuple[dict[type, object], object]]:
    """The bundle's parts in-process (mitmproxy's taddons), configured on an accounts file
    holding ``yaml`` and databases in ``folder``: yields ({part type: part}, tctx); the
    recorder's writer is stopped on exit."""
    from mitmproxy.test import taddons

    from mitmflare.addons.accounts_file import AccountsFile
    from mitmflare.addons.recorder import Recorder
    from mitmflare.bundle import make_addons

    (folder / "accounts.yaml").write_text(yaml)
    addons = make_addons()
    parts = {type(a): a for a in addons}
    with taddons.context(*addons) as tctx:
        tctx.configure(parts[AccountsFile], flare_accounts=str(folder / "accounts.yaml"),
                       flare_db=str(folder / "a.db"), flare_state=str(folder / "s.db"))
        try:
            yield parts, tctx
        finally:
            parts[Recorder].done()


def wait_for(check, timeout: float = 15.0, interval: float = 0.05):
    """The first true value of ``check()``, polled every ``interval`` s; AssertionError after
    ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


# The proxy reads its files (the accounts file, its .env, users and OAuth pairs in flare_state)
# every second, so a change takes effect within 2 s: the tests wait this long for it at most.
RELOAD_S = 2.2


def within_reload(check):
    """The first true value of ``check()``, polled until ``RELOAD_S`` s have passed (a change
    of the proxy's files takes effect within 2 s); AssertionError after that."""
    return wait_for(check, timeout=RELOAD_S, interval=0.05)


def start_login(args: list[str], program: list[str] | None = None,
                ) -> tuple[subprocess.Popen, str]:
    """Start ``mitmflare accounts login`` (or ``program``) with ``args`` as a process waiting
    for the pasted code; returns it and the authorization URL it printed."""
    program = program or [str(MITMDUMP.with_name("mitmflare")), "accounts", "login"]
    proc = subprocess.Popen([*program, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    return proc, proc.stdout.readline().strip()


def accounts_yaml(base_url: str, *accounts: dict) -> str:
    """YAML text for ``accounts`` (dicts of fields), each pointed at ``base_url``."""
    lines = ["accounts:"]
    for account in accounts:
        fields = {"provider": "anthropic", "base_url": base_url, **account}
        lines.append(f"  - name: {fields.pop('name')}")
        for key, value in fields.items():
            if isinstance(value, dict):
                lines.append(f"    {key}:")
                lines += [f"      {k}: {v}" for k, v in value.items()]
            else:
                lines.append(f"    {key}: {value}")
    return "\n".join(lines) + "\n"


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# the proxies' runtime files (mitmflare.runtime) go to a folder of the session's, not the user's
os.environ["MITMFLARE_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="mitmflare-runtime-")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """(PEM with key and certificate for localhost/127.0.0.1, PEM of the certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    both, ca = folder / "server.pem", folder / "ca.pem"
    both.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()) + cert_pem)
    ca.write_bytes(cert_pem)
    return both, ca
