"""``mitmflare stats | tail | prune | vacuum``: the analytics database (``flare_db``) from the
command line. ``stats`` runs the dashboard's own ``stats`` canned query; ``prune`` deletes in
small batches so a running proxy's writer is never held up for more than one batch."""

import json
import re
import time
from typing import Annotated

import typer

from .options import DB_DEFAULT, Db, Json, Yes, canned_sql, fail, interactive, read_db

GROUPS = ("account", "model", "user", "day")
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$")
_SPAN_S = {"min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SPANS = "min, h, d or w (e.g. 90min, 12h, 30d, 2w)"


def span_seconds(text: str) -> float:
    """``90min``, ``12h``, ``30d``, ``2w`` in seconds. ``m`` is refused (minutes or months?).
    Exits 1 naming the units otherwise."""
    match = _SPAN.match(text.strip().lower())
    if not match or match.group(2) not in _SPAN_S:
        unit = match.group(2) if match else ""
        why = "m could mean minutes or months" if unit in ("m", "mo") else "unknown unit"
        fail(f"{text!r}: {why}; give a number and one of the units {SPANS}")
    return float(match.group(1)) * _SPAN_S[match.group(2)]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``mitmflare`` app."""
    app.command("stats")(stats)
    app.command("tail")(tail)
    app.command("prune")(prune)
    app.command("vacuum")(vacuum)


CACHE_QUERIES = {  # canned query -> title, as `stats --cache` prints them (the dashboard's)
    "cache_loss_by_cause": "lost to prompt-cache misses per day and cause",
    "cache_loss_by_account": "per account",
    "cache_loss_by_user": "per user",
    "cache_loss_by_conversation": "top conversations",
    "cache_failovers": "account switches that cost the most",
}


def stats(since: Annotated[str, typer.Option(help="How far back: 90min, 24h, 7d, 2w.")] = "7d",
          by: Annotated[str, typer.Option(help=f"Group by: {', '.join(GROUPS)}.")] = "account",
          cache: Annotated[bool, typer.Option(
              "--cache", help="Prompt-cache losses instead: per day and cause, account, "
                              "user, conversation, and the costliest switches.")] = False,
          as_json: Json = False, db: Db = DB_DEFAULT) -> None:
    """Totals per account, model, user or day (the dashboard's `stats` query).

    Requests, tokens, cost, error rate and p50 latency. With --cache: the dollars lost to
    prompt-cache misses, as the dashboard's Prompt cache page shows them.

    Example: mitmflare stats --since 24h --by model
    """
    if by not in GROUPS:
        fail(f"--by must be one of {', '.join(GROUPS)}")
    import sqlite3

    from ..storage import retention

    start = retention.cutoff(span_seconds(since) / 86400.0)
    queries = CACHE_QUERIES if cache else {"stats": ""}
    conn = read_db(db)
    try:
        found = {name: [dict(r) for r in conn.execute(canned_sql(name),
                                                      {"since": start, "by": by})]
                 for name in queries}
    except sqlite3.OperationalError as exc:
        fail(f"{db}: {exc}")
    finally:
        conn.close()
    if cache:
        _print_cache(found, start, as_json)
        return
    rows = found["stats"]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from ..money import usd

    table = Table(by, "requests", "input", "output", "cache read", "cache write", "cost",
                  "errors", "p50 ms", title=f"since {start[:16].replace('T', ' ')} UTC")
    for r in rows:
        table.add_row(str(r["group"]), str(r["requests"]), f"{r['input_tokens']:,}",
                      f"{r['output_tokens']:,}", f"{r['cache_read_tokens']:,}",
                      f"{r['cache_write_tokens']:,}", usd(r["cost_usd"]),
                      f"{r['error_rate_pct']:.1f} %", str(r["p50_ms"] or "-"))
    Console(width=160).print(table)


def _print_cache(found: dict[str, list[dict]], start: str, as_json: bool) -> None:
    """``stats --cache``: one table per canned query of :data:`CACHE_QUERIES`."""
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    from ..money import usd

    console = Console(width=160)
    total = sum(r["loss_usd"] or 0 for r in found["cache_loss_by_cause"])
    console.print(f"lost to prompt-cache misses since {start[:16].replace('T', ' ')} UTC: "
                  f"{usd(total)}")
    for name, title in CACHE_QUERIES.items():
        rows = found[name]
        if not rows:
            continue
        table = Table(*rows[0], title=title)
        for r in rows:
            table.add_row(*(usd(v) if k.endswith("_usd") and v is not None else
                            "-" if v is None else str(v) for k, v in r.items()))
        console.print(table)


def tail(last: Annotated[int, typer.Option(help="Show this many recent rows first.")] = 10,
         count: Annotated[int, typer.Option(
             help="Stop after this many new rows (0: until Ctrl-C).")] = 0,
         as_json: Json = False, db: Db = DB_DEFAULT) -> None:
    """Follow requests live, one line each, until Ctrl-C.

    Each line: time, account, model, status, tokens, cost, ms, failover.

    Example: mitmflare tail --last 20
    """
    import sqlite3

    from ..storage.writer import request_line

    conn = read_db(db)
    seen = 0
    try:
        newest = conn.execute("select coalesce(max(rowid), 0) from requests").fetchone()[0]
        cursor = max(newest - last, 0)
        while True:
            rows = conn.execute("select rowid, * from requests where rowid > ? order by rowid",
                                [cursor]).fetchall()
            for row in rows:
                cursor = row["rowid"]
                data = dict(zip(row.keys(), row, strict=True))
                data.pop("rowid")
                typer.echo(json.dumps(data) if as_json else
                           f"{(data['started_at'] or '')[11:19]} {request_line(data)}")
                if row["rowid"] > newest:
                    seen += 1
                    if count and seen >= count:
                        return
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except sqlite3.OperationalError as exc:
        fail(f"{db}: {exc}")
    finally:
        conn.close()


def prune(older_than: Annotated[str, typer.Option(
              "--older-than", help=f"Delete rows older than this; units {SPANS}.")] = "30d",
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count.")] = False,
          yes: Yes = False, db: Db = DB_DEFAULT) -> None:
    """Delete old rows in small batches while the proxy keeps writing.

    Requests, attempts, account events and payloads go; the hourly rollup stays (long-range
    charts stay right); then the WAL's space is given back. Deleting more than half of the
    rows asks first (--yes: do not ask; without a terminal and without --yes it refuses).

    Example: mitmflare prune --older-than 90d --dry-run
    """
    import sqlite3

    from rich.progress import Progress

    from ..storage import retention

    before = retention.cutoff(span_seconds(older_than) / 86400.0)
    read_db(db).close()  # exits when the file is missing
    conn = sqlite3.connect(db, timeout=30)
    try:
        counts = retention.count_older(conn, before)
        total = sum(counts.values())
        summary = ", ".join(f"{n:,} {t}" for t, n in counts.items())
        if dry_run:
            typer.echo(f"would delete rows before {before}: {summary}")
            return
        rows = sum(conn.execute(f"select count(*) from {t}").fetchone()[0] for t in counts)
        if total * 2 > rows and not yes:
            what = f"delete {total:,} of {rows:,} rows (more than half; all before {before})"
            if not interactive():
                fail(f"--older-than {older_than} would {what}; add --yes to do it")
            if not typer.confirm(f"{what[0].upper()}{what[1:]}?", default=False):
                fail("nothing deleted")
        with Progress(transient=True) as bar:
            task = bar.add_task(f"deleting rows before {before[:10]}", total=total or 1)
            deleted = retention.prune(conn, before, progress=lambda n: bar.advance(task, n))
        conn.execute("pragma wal_checkpoint(TRUNCATE)")
        typer.echo(f"deleted rows before {before}: "
                   + ", ".join(f"{n:,} {t}" for t, n in deleted.items())
                   + " (usage_hourly kept). `mitmflare vacuum` returns the space to the disk.")
    except sqlite3.OperationalError as exc:
        fail(f"{db}: {exc}")
    finally:
        conn.close()


def vacuum(db: Db = DB_DEFAULT) -> None:
    """Rebuild the database file to return free space to the disk.

    Blocks the proxy's writer while it runs (rows queue in memory meanwhile), then
    truncates the WAL.

    Example: mitmflare vacuum
    """
    import sqlite3

    read_db(db).close()
    conn = sqlite3.connect(db, timeout=60)
    try:
        size = conn.execute("pragma page_count").fetchone()[0] * \
            conn.execute("pragma page_size").fetchone()[0]
        conn.execute("vacuum")
        conn.execute("pragma wal_checkpoint(TRUNCATE)")
        after = conn.execute("pragma page_count").fetchone()[0] * \
            conn.execute("pragma page_size").fetchone()[0]
    except sqlite3.OperationalError as exc:
        fail(f"{db}: {exc}")
    finally:
        conn.close()
    typer.echo(f"vacuumed {db}: {size / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
