"""``mitmflare run``: the proxy (mitmdump, or mitmweb with ``--web``) and the Datasette
dashboard, started together and stopped together (Ctrl-C or SIGTERM). ``./scripts/run`` and
the container image call it.

It fails fast, one line each, on what would start a half-working setup: a port already
taken, a non-loopback address without access keys (unless ``--insecure-open``), a dashboard
beyond loopback without a password hash. With ``--demo`` it adds a simulated upstream (with
rate-limit and overload errors on purpose), five demo accounts and steady SDK traffic, all
in ``.demo/``.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..config.defaults import ACCOUNTS_PATH, DB_PATH, STATE_PATH
from ..demo import helpers as demo
from . import lock, startup

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
LOOPBACK = ("127.", "localhost", "::1")
DEMO = ".demo"  # the demo's files, relative to the working directory
DEMO_WINDOW_SCALE = 60  # the demo's simulated usage windows last 60 times less: 5 h -> 5 min

ENVIRONMENT = """\
Environment (also read from a .env file in the working directory):
  MITMFLARE_HOST            listen address (127.0.0.1)
  MITMFLARE_PORT            proxy port, Anthropic format (8080);
                            with --demo the OpenAI listener is +10
  MITMFLARE_DASHBOARD_PORT  Datasette port (8001)
  MITMFLARE_WEB_PORT        mitmweb port, with --web (8081)
  MITMFLARE_SIM_PORT        simulated upstream, with --demo (9099)
  MITMFLARE_DASHBOARD_HASH  password hash (datasette hash-password):
                            the dashboard asks for user root and it;
                            required beyond a loopback address
  MITMFLARE_ACCOUNTS        accounts file (config/accounts.yaml,
                            created on first run)
  MITMFLARE_DB              analytics database (mitmflare.db)
  MITMFLARE_STATE           secrets and state (mitmflare-state.db)
  MITMFLARE_REDIS_URL       Redis shared by every process of one pool
  MITMFLARE_WRITER          off: with Redis, start no `mitmflare writer`
                            (hosts that do not serve the dashboard)"""


def _client_host(host: str) -> str:
    """The address to reach a listener bound to ``host`` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name) or str(default)
    if not value.isdigit():
        raise SystemExit(f"{name} must be a port number, not {value!r}")
    return int(value)


def run(ctx: typer.Context,
        demo_mode: Annotated[bool, typer.Option(
            "--demo", help="Simulated upstream, five demo accounts and a little traffic (files "
                           "in .demo/); its rate-limit and overload errors are on purpose.")] = False,
        web: Annotated[bool, typer.Option(
            "--web", help="mitmweb (flow inspector) instead of mitmdump.")] = False,
        insecure_open: Annotated[bool, typer.Option(
            "--insecure-open", help="Allow a non-loopback MITMFLARE_HOST without access keys "
                                    "(anyone who reaches the port spends your accounts).")] = False,
        workers: Annotated[int, typer.Option(
            "--workers", min=0, help="N mitmdump workers behind HAProxy on the proxy port, one "
                                     "pool through Redis (flare_redis, else a private "
                                     "redis-server); SIGHUP restarts them one at a time.")] = 0,
        reload: Annotated[bool, typer.Option(
            "--reload", help="Restart the workers of the `mitmflare run --workers` running "
                             "from this folder one at a time, then exit.")] = False,
        ) -> None:
    """Start the proxy and the dashboard; Ctrl-C stops both.

    Anything else goes to mitmdump/mitmweb.

    Example: mitmflare run --web --set flare_strategy=round-robin
    """
    if reload:
        from . import workers as pool

        raise typer.Exit(pool.reload())
    try:
        own_sets, passthrough = startup.merge_sets({}, list(ctx.args))
    except ValueError as exc:
        typer.echo(f"refusing to start: {exc}", err=True)
        raise typer.Exit(1) from None
    host = os.environ.get("MITMFLARE_HOST") or "127.0.0.1"
    port = _env_int("MITMFLARE_PORT", 8080)
    ds_port = _env_int("MITMFLARE_DASHBOARD_PORT", 8001)
    web_port = _env_int("MITMFLARE_WEB_PORT", 8081)
    sim_port = _env_int("MITMFLARE_SIM_PORT", 9099)
    keys = own_sets.get("flare_require_access_keys") in ("true", "1")
    redis_url = own_sets.get("flare_redis") or os.environ.get("MITMFLARE_REDIS_URL", "")
    if workers and (demo_mode or web):
        typer.echo("--workers serves mitmdump workers only: leave out --demo and --web",
                   err=True)
        raise typer.Exit(1)
    if workers:
        from . import workers as pool

        missing = pool.missing_tools(need_redis=not redis_url)
        if missing:
            typer.echo(missing, err=True)
            raise typer.Exit(1)

    wanted = [("proxy (MITMFLARE_PORT)", host, port)]
    if demo_mode:
        wanted.append(("OpenAI listener (MITMFLARE_PORT+10)", host, port + 10))
    wanted.append(("dashboard (MITMFLARE_DASHBOARD_PORT)", host, ds_port))
    if web:
        wanted.append(("mitmweb (MITMFLARE_WEB_PORT)", host, web_port))
    if demo_mode:
        wanted.append(("simulated upstream (MITMFLARE_SIM_PORT)", "127.0.0.1", sim_port))
    held = _demo_lock(wanted) if demo_mode else None
    from . import ports

    taken = ports.clashes(wanted)
    for line in taken:
        typer.echo(line, err=True)
    if taken:
        raise typer.Exit(1)
    loopback = host.startswith(LOOPBACK)
    if not loopback and not keys and not insecure_open:
        typer.echo(f"refusing to listen on {host} without access keys: anyone who reaches it "
                   f"would spend your accounts. Add --set flare_require_access_keys=true (and "
                   f"create keys with 'mitmflare users add NAME'), or pass --insecure-open.",
                   err=True)
        raise typer.Exit(1)
    from ..storage import dashboard

    meta = ".mitmflare/datasette-metadata.yml"
    if dashboard.main([meta] + ([] if loopback else ["--require-auth"])):
        raise typer.Exit(1)

    procs: list[subprocess.Popen] = []

    def spawn(args: list[str], log: str | None = None, env: dict[str, str] | None = None,
              alone: bool = False) -> subprocess.Popen:
        """``alone``: in its own session (Ctrl-C in the terminal does not reach it; stopped
        by us, after the processes started later)."""
        out = open(log, "ab") if log else None  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT if out else None,
                                env={**os.environ, **env} if env else None,
                                start_new_session=alone)
        procs.append(proc)
        return proc

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started in the background (SIGINT ignored)
    py = str(BIN / "python")
    modes = [f"reverse:https://anthropic.mitmflare.invalid@{host}:{port}"]
    try:
        if demo_mode:
            accounts, db, state = (".demo/accounts.yaml", ".demo/mitmflare.db",
                                   ".demo/mitmflare-state.db")
            ds_log = ".demo/datasette.log"
            spawn([py, "-m", "mitmflare.demo.simulator", "--port", str(sim_port), "--chunk-delay-ms",
                   "40", "--chaos", "0.08", "--windows", "--enforce-windows", "--window-scale",
                   str(DEMO_WINDOW_SCALE)], ".demo/simulator.log")
            demo.write_accounts(accounts, f"http://127.0.0.1:{sim_port}")
            demo_key = demo.demo_user_key(state)
            modes.append(f"reverse:https://openai.mitmflare.invalid@{host}:{port + 10}")
            typer.echo(f"Demo: a simulated upstream on 127.0.0.1:{sim_port} answers 8 % of "
                       f"requests with a rate-limit or overload error on purpose, and its "
                       f"5-hour windows last {5 * 60 // DEMO_WINDOW_SCALE} minutes (a used-up "
                       f"one is refused until it resets), so you can watch failover and "
                       f"recovery.", err=True)
        else:
            accounts = os.environ.get("MITMFLARE_ACCOUNTS") or ACCOUNTS_PATH
            db = os.environ.get("MITMFLARE_DB") or DB_PATH
            state = os.environ.get("MITMFLARE_STATE") or STATE_PATH
            ds_log = "mitmflare-dashboard.log"
            if not Path(accounts).exists():
                Path(accounts).parent.mkdir(parents=True, exist_ok=True)
                # private from the start: the keys the operator adds will live here
                fd = os.open(accounts, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as created:
                    created.write((ROOT / "config" / "accounts.example.yaml").read_bytes())
                typer.echo(f"Created {accounts} with no account yet: add one (its comments show "
                           f"how; API keys via ${{VARS}} or a .env file beside it, or `mitmflare "
                           f"accounts add`) and it is picked up within 2 s. Or try --demo.",
                           err=True)
        demo.init_db(db)
        dash = spawn([str(BIN / "datasette"), "serve", db, "-m", meta, "--static",
                      f"assets:{ROOT / 'datasette-assets'}", "--host", host, "--port",
                      str(ds_port), "--setting", "sql_time_limit_ms", "3000", "--setting",
                      "default_cache_ttl", "0"], ds_log)
        typer.echo(f"Dashboard: http://{host}:{ds_port}/-/dashboards/overview (log: {ds_log})",
                   err=True)
        typer.echo(f"Proxy:     ANTHROPIC_BASE_URL=http://{host}:{port}", err=True)
        if demo_mode:
            spawn([py, "-m", "mitmflare.demo.helpers", "traffic", f"http://{host}:{port}",
                   f"http://{host}:{port + 10}"], env={demo.KEY_VARIABLE: demo_key})
        tool = ["mitmweb", "--set", f"web_host={host}", "--set", f"web_port={web_port}",
                "--set", "web_open_browser=false"] if web else ["mitmdump"]
        if web:
            typer.echo("mitmweb:   open the URL printed below (it carries the access token)",
                       err=True)
        info = f"demo,dashboard={ds_port},simulated upstream={sim_port}" if demo_mode else \
            f"dashboard={ds_port}"
        options = {"flare_accounts": accounts, "flare_db": db, "flare_state": state,
                   "connection_strategy": "lazy", "flow_detail": "0" if demo_mode else "1",
                   "flare_runtime_info": info}
        if demo_mode:
            options["flare_request_log"] = "true"
        options.update(own_sets)  # the user's --set wins, and each option goes once
        args = [str(BIN / tool[0]), *tool[1:], "-s", str(ROOT / "addons" / "bundle.py")]
        if workers:
            code = _serve_workers(workers, host, port, redis_url, args, options, passthrough,
                                  spawn, (db, state))
            raise typer.Exit(code)
        if redis_url:
            _start_writer(spawn, redis_url, db, state, options)
        for mode in modes:
            args += ["--mode", mode]
        for key, value in options.items():
            args += ["--set", f"{key}={value}"]
        proxy = spawn(args + passthrough)
        not_ready = startup.wait_ready(f"http://{_client_host(host)}:{port}", proxy)
        if not_ready is not None:
            typer.echo(f"mitmflare did not start: {not_ready}. Stopping everything.", err=True)
            raise typer.Exit(1)
        typer.echo(f"Ready: the proxy answers on http://{host}:{port}", err=True)
        if dash.poll() is not None:
            typer.echo(f"The dashboard stopped: see {ds_log}", err=True)
        code = proxy.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        # the latest first: the proxies hand their last rows on before the writer and Redis go
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if held is not None:
            lock.release(held)
    raise typer.Exit(code)


def _start_writer(spawn, redis_url: str, db: str, state: str, options: dict[str, str]) -> None:
    """``mitmflare writer``: the rows of every process on ``redis_url`` into ``db`` (not with
    ``MITMFLARE_WRITER=off``: on the hosts that do not serve the dashboard), with the
    retention and request log of the proxies' ``options`` (their ``--set`` values)."""
    if os.environ.get("MITMFLARE_WRITER", "").lower() in ("off", "0", "false", "no"):
        return
    settings = [f"--{name.removeprefix('flare_').replace('_', '-')}={options[name]}"
                for name in ("flare_retention_days", "flare_payload_retention_days")
                if name in options]
    if options.get("flare_request_log", "").lower() in ("true", "1", "yes", "on"):
        settings.append("--request-log")
    spawn([str(BIN / "mitmflare"), "writer", "--redis", redis_url, "--db", db, "--state",
           state, *settings], "mitmflare-writer.log", alone=True)
    typer.echo("Writer:    rows of every process on this Redis go to this host's database "
               "(log: mitmflare-writer.log)", err=True)


def _serve_workers(count: int, host: str, port: int, redis_url: str, args: list[str],
                   options: dict[str, str], passthrough: list[str], spawn,
                   files: tuple[str, str]) -> int:
    """``--workers``: start a private Redis when none is given, the workers and HAProxy
    (:mod:`.workers`), then supervise them; the exit code."""
    from . import workers as pool

    folder = pool.private_folder()
    if not redis_url:
        redis_url = pool.start_redis(folder, spawn)
        typer.echo(f"Redis:     a private redis-server for this run ({redis_url})", err=True)
    _start_writer(spawn, redis_url, *files, options)
    shared = {**options, "flare_redis": redis_url}

    def command(worker_port: int) -> list[str]:
        line = [*args, "--mode", f"reverse:https://anthropic.mitmflare.invalid@127.0.0.1:"
                                 f"{worker_port}"]
        for key, value in shared.items():
            line += ["--set", f"{key}={value}"]
        return line + passthrough

    supervisor = pool.Supervisor(count, command, spawn, folder)
    try:
        why = supervisor.start(pool.balancer.bind_address(host, port),
                               f"http://{_client_host(host)}:{port}")
        if why is not None:
            typer.echo(f"mitmflare did not start: {why}. Stopping everything.", err=True)
            return 1
        typer.echo(f"Ready: {count} workers behind HAProxy on http://{host}:{port} (logs: "
                   f"mitmflare-worker<i>.log, mitmflare-balancer.log; `mitmflare run --reload` "
                   f"or SIGHUP restarts them one at a time)", err=True)
        return pool.serve(supervisor)
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def _demo_lock(wanted: list[tuple[str, str, int]]) -> int:
    """Hold ``.demo/run.lock`` (see :mod:`.lock`) naming this run's ports; exit 1 with one
    line naming the running demo's PID and ports when another demo from this folder holds it."""
    Path(DEMO).mkdir(exist_ok=True)
    try:
        return lock.take(f"{DEMO}/run.lock", {name.split(" (")[0]: port for name, _, port in wanted})
    except lock.Held as held:
        typer.echo(f"refusing to start: a demo from this folder is already running "
                   f"({lock.holder_line(held.facts)}) and owns {DEMO}/; stop it first (Ctrl-C "
                   f"where it runs, or kill {held.facts.get('pid', 'its PID')})", err=True)
        raise typer.Exit(1) from None
