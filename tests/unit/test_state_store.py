"""The state store (:mod:`mitmflare.storage.state_store`) on a real SQLite file."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from mitmflare.providers.oauth import TokenSet
from mitmflare.routing.account_state import AccountState
from mitmflare.storage.state_store import SqliteStateStore, StoreUnavailable
from mitmflare.storage.users import User

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path):
    s = SqliteStateStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def test_polled_reads_never_create_the_file(store):
    for read in (store.tokens, store.users, store.latest_command_id,
                 lambda: store.commands_since(0)):
        with pytest.raises(StoreUnavailable):
            read()
    assert not os.path.exists(store.path)


def test_the_file_is_private_and_account_state_round_trips(store):
    state = AccountState(cooldown_until=NOW, benched=True, model_cooldowns={"m": NOW})
    store.save_account_states({"a": {"provider": "anthropic", **state.to_persisted()}})
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    loaded = store.account_states()["a"]
    assert loaded["provider"] == "anthropic" and loaded["cooldown_until"] == NOW
    assert loaded["model_cooldowns"] == {"m": NOW} and loaded["benched"] is True
    store.save_account_states({"a": {"provider": "anthropic", "cooldown_until": 0.0}})
    assert store.account_states()["a"]["cooldown_until"] == 0.0


def test_tokens_and_users(store):
    store.save_tokens("sub", TokenSet("at", "rt", NOW, NOW - 5, "fp"))
    store.save_tokens("sub", TokenSet("at2", "rt2", NOW, NOW, "fp"))  # replaced
    assert store.tokens() == {"sub": TokenSet("at2", "rt2", NOW, NOW, "fp")}
    store.save_user(User("zed", "h1", "mfk_1234"))
    store.save_user(User("amy", "h2", "mfk_5678", allowed_models=["claude-*"]))
    assert [u.name for u in store.users()] == ["amy", "zed"]
    assert store.users()[0].allowed_models == ["claude-*"]
    store.remove_user("zed")
    assert [u.name for u in store.users()] == ["amy"]


def test_queue_reset_resumes_the_stored_state_and_queues_the_command(store):
    assert store.queue_reset("ghost") is False  # queued all the same
    state = AccountState(cooldown_until=NOW, needs_reauth=True, constrained_until=NOW,
                         requests=7)
    store.save_account_states({"a": {"provider": "anthropic", **state.to_persisted()}})
    assert store.queue_reset("a") is True
    stored = store.account_states()["a"]
    assert stored["cooldown_until"] == 0.0 and stored["needs_reauth"] is False
    assert stored["constrained_until"] == 0.0 and stored["requests"] == 7
    assert store.commands_since(0) == [(1, "reset", "ghost", ""), (2, "reset", "a", "")]
    assert store.latest_command_id() == 2 and store.commands_since(1) == [(2, "reset", "a", "")]


def test_a_file_replaced_while_open_is_written_anew(store):
    store.save_tokens("sub", TokenSet("at", "rt"))
    os.unlink(store.path)
    assert store.replaced()
    store.save_tokens("sub", TokenSet("at2", "rt2"))  # a new file, with its tables
    assert store.tokens()["sub"].access_token == "at2"


def test_one_writer_connection_shared_by_threads(store):
    def save(i: int) -> None:
        for j in range(20):
            store.save_user(User(f"u{i}-{j}", f"h{i}-{j}", "mfk_"))

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.users()) == 80
