"""The accounts file in a running proxy: a file that cannot be read as a whole is reported
once and the last good accounts keep serving (fail closed)."""

from __future__ import annotations

import logging
import os

from conftest import bundle_parts
from mitmflare.addons.accounts_file import AccountsFile

GOOD = """\
accounts:
  - name: a
    provider: anthropic
    api_key: sk-ant-api03-SECRET-A
  - name: b
    provider: anthropic
    api_key: sk-ant-api03-SECRET-B
"""


async def test_a_control_character_written_while_running_keeps_the_last_accounts(tmp_path,
                                                                                  caplog):
    path = tmp_path / "accounts.yaml"
    with bundle_parts(tmp_path, GOOD) as (parts, _):
        files = parts[AccountsFile]
        assert sorted(files.proxy.pool.accounts) == ["a", "b"]
        files._running = True  # as after mitmproxy's `running` hook: a rejection is an error
        path.write_text(GOOD.replace("SECRET-B", "SECRET-B\x1b[0m").replace("name: a", "name: c"))
        os.utime(path, ns=(1, 1))  # a new stamp even within the file system's time resolution
        with caplog.at_level(logging.INFO, logger="mitmflare"):
            for _ in range(3):  # the watcher polls every second: it says so once
                await files._poll()
        assert sorted(files.proxy.pool.accounts) == ["a", "b"]  # not c: nothing of it applied
        (error,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert error.levelno == logging.ERROR and error.exc_info is None
        message = error.getMessage()
        assert "accounts file rejected, keeping the last good configuration (2 accounts)" in message
        assert f"{path}: line 7, column 35: unacceptable character #x001b" in message
        assert "\n" not in message and "SECRET" not in caplog.text
        assert files.proxy.config_errors == [message.split(": ", 1)[1]]

        path.write_text(GOOD.replace("name: a", "name: c"))  # fixed: applied on the next poll
        await files._poll()
        assert sorted(files.proxy.pool.accounts) == ["b", "c"] and files.proxy.config_errors == []


def test_a_proxy_started_on_a_file_with_a_control_character_serves_no_account(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mitmflare"), \
            bundle_parts(tmp_path, GOOD.replace("name: b", "name: b\x07")) as (parts, _):
        files = parts[AccountsFile]
        assert files.proxy.pool.accounts == {}
        (error,) = files.proxy.config_errors
        assert error.endswith("line 5, column 12: unacceptable character #x0007 (special "
                              "characters are not allowed); delete it, or write it as \\u0007 "
                              "inside double quotes")
    assert "accounts file rejected" in caplog.text and "Traceback" not in caplog.text
