"""The database writer in its own process: rows, spend and settings cross the pipe; a dead
child is replaced; a proxy killed with SIGKILL loses no row it had handed over."""

from __future__ import annotations

import logging
import sqlite3
import time

import httpx

from conftest import accounts_yaml
from mitmflare.storage.writer_process import SEND_S, WriterProcess


def request_row(i: int, **extra) -> dict:
    return {"id": f"r{i}", "started_at": time.time(), "provider": "anthropic",
            "account": "key-a", "model": "claude-sonnet-4-6", "status": 200,
            "input_tokens": 1000 + i, "output_tokens": 50, **extra}


def ids(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in conn.execute("select id from requests"))
    finally:
        conn.close()


def test_rows_spend_and_request_log_cross_the_pipe(tmp_path, caplog):
    writer = WriterProcess(str(tmp_path / "a.db"), str(tmp_path / "s.db"))
    writer.start()
    assert writer.ready.wait(30)
    writer.configure(request_log=True)
    with caplog.at_level(logging.INFO):
        for i in range(200):
            writer.put("request", request_row(i))
        assert writer.flush(30)
    assert len(ids(tmp_path / "a.db")) == 200
    month = time.strftime("%Y-%m", time.gmtime())
    assert writer.spend[("account", "key-a", month)] > 0  # priced in the child, read here
    assert writer.write_errors == 0 and writer.db_bytes > 0
    assert "key-a claude-sonnet-4-6 200 1199/50 tok" in caplog.text  # the child's log line
    writer.stop()
    assert writer._proc.returncode == 0


def test_a_dead_writer_process_is_replaced_and_the_batch_sent_again(tmp_path, caplog):
    writer = WriterProcess(str(tmp_path / "a.db"), str(tmp_path / "s.db"))
    writer.start()
    assert writer.ready.wait(30)
    writer.put("request", request_row(0))
    assert writer.flush(30)
    first = writer._proc
    first.kill()
    first.wait(10)
    with caplog.at_level(logging.WARNING):
        writer.put("request", request_row(1))
        assert writer.flush(60)
    assert writer._proc is not first and "starting another" in caplog.text
    assert ids(tmp_path / "a.db") == ["r0", "r1"]
    assert writer.write_errors == 0
    writer.stop()


def test_proxy_killed_with_sigkill_loses_no_handed_over_row(sim, proxy):
    p = proxy(accounts_yaml(sim.url, {"name": "key-a", "api_key": "sk-ant-api03-AAA"}))
    body = {"model": "claude-sonnet-4-6", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=p.url, timeout=10) as client:
        for _ in range(30):
            assert client.post("/v1/messages", json=body).status_code == 200
    time.sleep(SEND_S * 6)  # handed to the writer process, maybe not yet written
    p.proc.kill()
    p.proc.wait(10)
    rows = p.wait_rows(30, timeout=15)  # the orphaned child finishes the job
    assert all(r["account"] == "key-a" and r["cost_usd"] for r in rows)


def test_a_batch_sent_twice_adds_each_request_once(tmp_path):
    from mitmflare.storage.writer import DatabaseWriter
    writer = DatabaseWriter(str(tmp_path / "a.db"), str(tmp_path / "s.db"))
    writer.start()
    assert writer.ready.wait(10)
    for _ in range(2):  # as a replaced writer process gets the frames not yet confirmed
        writer.put_frame([("request", request_row(0)), ("request", request_row(1))])
        assert writer.flush()
    writer.stop()
    conn = sqlite3.connect(tmp_path / "a.db")
    assert ids(tmp_path / "a.db") == ["r0", "r1"]
    assert conn.execute("select sum(requests) from usage_hourly").fetchone()[0] == 2
    assert writer.write_errors == writer.rows_lost == 0
