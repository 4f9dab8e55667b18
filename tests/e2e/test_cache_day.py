"""End to end: ``./scripts/bench --cache-day`` on a tiny day (2 conversations, 15 simulated
minutes in a few seconds) prints one column per routing, and its figures are those of the
routings' databases."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

ROUTINGS = ["mitmflare", "round-robin", "session, no TTL", "round-robin, sticky"]
CAUSES = ["first", "switch", "expired", "changed", "unknown"]


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> tuple[dict[str, list[str]], list[str], Path]:
    """The printed table (row label -> cells), its header and the folder of the databases."""
    keep = tmp_path_factory.mktemp("cache-day")
    done = subprocess.run([sys.executable, "scripts/bench.py", "--cache-day",
                           "--conversations", "2", "--hours", "0.25", "--scale", "100",
                           "--keep", str(keep)], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # every request sent is a row
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip().strip("*") for c in line.strip("|").split("|")] for line in lines[2:])}
    return rows, header, keep


def db_figures(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        requests, cost, loss = conn.execute(
            "select count(*), sum(cost_usd), sum(cache_loss_usd) from requests").fetchone()
        writes = dict(conn.execute("select cache_event, count(*) from requests "
                                   "where cache_event is not null group by 1").fetchall())
    finally:
        conn.close()
    return {"requests": requests, "cost": cost, "loss": loss or 0.0, "writes": writes}


def test_the_table_has_a_column_per_routing_and_a_row_per_cause(day):
    rows, header, _ = day
    assert header == ["", *ROUTINGS]
    assert [label for label in rows if label.startswith("…")] == \
        [f"… {cause} (writes)" for cause in CAUSES]
    assert {"requests (errors to clients)", "cache hit rate", "total cost",
            "lost to cache misses"} <= set(rows)
    assert all(len(cells) == len(ROUTINGS) for cells in rows.values())


def test_the_figures_come_from_each_routings_database(day):
    rows, _, keep = day
    for i, name in enumerate(ROUTINGS):
        db = db_figures(keep / (name.replace(",", "").replace(" ", "-") + ".db"))
        assert rows["requests (errors to clients)"][i] == f"{db['requests']} (0)"
        assert rows["total cost"][i] == f"${db['cost']:.2f}"
        assert rows["lost to cache misses"][i] == f"${db['loss']:.2f}"
        for cause in CAUSES:
            assert rows[f"… {cause} (writes)"][i].endswith(f"({db['writes'].get(cause, 0)})")


def test_round_robin_without_stickiness_switches_and_mitmflare_does_not(day):
    rows, _, _ = day
    switches = [int(cell.rsplit("(", 1)[1].rstrip(")")) for cell in rows["… switch (writes)"]]
    assert switches[ROUTINGS.index("mitmflare")] == 0  # no account reached its limit
    assert switches[ROUTINGS.index("round-robin")] > 0
