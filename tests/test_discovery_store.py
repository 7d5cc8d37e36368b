"""DiscoveryStore: etcd index semantics, create/duplicate, history replay, persistence, collection by age."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from coreos_lab.discovery.store import TOKEN_RE, DiscoveryStore, EtcdError, StateUnavailable, watch_matches
from coreos_lab.errors import BadInput


@pytest.fixture
def store(tmp_path: Path) -> DiscoveryStore:
    s = DiscoveryStore(tmp_path / ".discovery")
    yield s
    s.close()


def test_tokens_are_32_hex_and_size_is_a_config_key(store: DiscoveryStore) -> None:
    tok = store.create_token(5)
    assert TOKEN_RE.match(tok.token)
    node = store.get(tok.token, "_config/size")
    assert (node.key, node.value, node.created_index) == (f"/{tok.token}/_config/size", "5", tok.created_index)
    assert store.get(tok.token, "_config").nodes == (node,)
    assert store.create_token(3).token != tok.token


@pytest.mark.parametrize("size", [0, 100, -1, True])
def test_size_out_of_range_is_bad_input(store: DiscoveryStore, size: int) -> None:
    with pytest.raises(BadInput, match="size"):
        store.create_token(size)


def test_global_index_increases_with_every_write_and_nodes_carry_it(store: DiscoveryStore) -> None:
    a = store.create_token(3)
    b = store.create_token(3)
    first = store.put(a.token, "aaa", "n1=http://127.0.0.1:2380", prev_exist=False)
    second = store.put(b.token, "bbb", "n2=http://127.0.0.1:2381", prev_exist=False)
    assert [a.created_index, b.created_index, first.index, second.index] == [1, 2, 3, 4]
    assert store.current_index() == 4
    assert first.action == "create" and first.node.created_index == first.node.modified_index == 3
    updated = store.put(a.token, "aaa", "n1=http://127.0.0.1:2390")
    assert (updated.action, updated.node.created_index, updated.node.modified_index) == ("set", 3, 5)
    assert updated.prev_node is not None and updated.prev_node.value == "n1=http://127.0.0.1:2380"


def test_directory_lists_members_in_registration_order_never_config(store: DiscoveryStore) -> None:
    tok = store.create_token(3).token
    for member in ("ccc", "aaa", "bbb"):
        store.put(tok, member, f"{member}=http://x:2380", prev_exist=False)
    directory = store.get(tok, "")
    assert directory.nodes is not None
    assert [n.name for n in directory.nodes] == ["ccc", "aaa", "bbb"]
    assert "nodes" in directory.as_json() and directory.as_json()["dir"] is True


def test_duplicate_create_is_105_and_unknown_keys_are_100(store: DiscoveryStore) -> None:
    tok = store.create_token(3).token
    store.put(tok, "aaa", "v", prev_exist=False)
    with pytest.raises(EtcdError) as dup:
        store.put(tok, "aaa", "v2", prev_exist=False)
    assert (dup.value.code, dup.value.status, dup.value.cause) == (105, 412, f"/{tok}/aaa")
    assert store.get(tok, "aaa").value == "v"  # the failed write changed nothing
    with pytest.raises(EtcdError) as missing:
        store.get("0" * 32, "_config/size")
    assert (missing.value.code, missing.value.status) == (100, 404)
    with pytest.raises(EtcdError) as update_missing:
        store.put(tok, "zzz", "v", prev_exist=True)
    assert update_missing.value.code == 100
    assert store.current_index() == 2


@pytest.mark.parametrize(
    ("name", "code"), [("", 102), ("_config", 102), ("_config/size", 107), ("a/b", 209), ("a\n", 209)]
)
def test_only_member_keys_are_writable(store: DiscoveryStore, name: str, code: int) -> None:
    tok = store.create_token(3).token
    with pytest.raises(EtcdError) as err:
        store.put(tok, name, "9")
    assert err.value.code == code
    assert store.get(tok, "_config/size").value == "3"


def test_history_replays_the_first_matching_write_at_or_after_wait_index(store: DiscoveryStore) -> None:
    tok = store.create_token(3).token
    other = store.create_token(3).token
    e1 = store.put(tok, "aaa", "a", prev_exist=False)
    store.put(other, "xxx", "x", prev_exist=False)
    e2 = store.put(tok, "bbb", "b", prev_exist=False)
    assert store.first_event_since(tok, "aaa", recursive=False, since=e1.index) == e1
    assert store.first_event_since(tok, "aaa", recursive=False, since=e1.index + 1) is None
    assert store.first_event_since(tok, "", recursive=True, since=e1.index + 1) == e2
    assert store.first_event_since(tok, "", recursive=False, since=1) is None
    # The size write is part of the token's history, as in etcd.
    first = store.first_event_since(tok, "", recursive=True, since=1)
    assert first is not None and first.node.key.endswith("/_config/size")


def test_state_survives_reopening(tmp_path: Path) -> None:
    first = DiscoveryStore(tmp_path / "d")
    tok = first.create_token(3).token
    created = first.put(tok, "aaa", "n1=http://h:2380", prev_exist=False)
    first.close()
    second = DiscoveryStore(tmp_path / "d")
    try:
        assert second.get(tok, "aaa") == created.node
        assert second.current_index() == created.index
        assert second.first_event_since(tok, "aaa", recursive=False, since=created.index) == created
    finally:
        second.close()


def test_collect_removes_only_tokens_older_than_the_age(store: DiscoveryStore) -> None:
    old = store.create_token(3, now=1_000.0).token
    store.put(old, "aaa", "a", prev_exist=False)
    young = store.create_token(3, now=5_000.0).token
    assert store.collect(3_600, now=5_100.0) == 1
    assert [t.token for t in store.tokens()] == [young]
    with pytest.raises(EtcdError):
        store.get(old, "")
    assert store.first_event_since(old, "", recursive=True, since=0) is None
    index = store.current_index()
    assert store.create_token(3).created_index == index + 1  # the index never goes back


def test_unwritable_state_dir_is_bad_input(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BadInput, match=str(blocker)):
        DiscoveryStore(blocker / ".discovery")


def test_a_write_lock_held_elsewhere_is_a_busy_error_naming_the_database_and_reads_go_on(tmp_path: Path) -> None:
    store = DiscoveryStore(tmp_path / "d", busy_timeout=0.2)
    token = store.create_token(3).token
    other = sqlite3.connect(store.path, isolation_level=None)  # another connection, as another process has
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StateUnavailable, match=f"{store.path} is locked") as raised:
            store.create_token(3)
        assert raised.value.busy
        assert store.token(token) is not None  # WAL: readers never wait for the writer
        other.execute("ROLLBACK")
        assert store.create_token(3).created_index == store.current_index()  # nothing left half-done
    finally:
        other.close()
        store.close()


def test_each_thread_has_its_own_connection(store: DiscoveryStore) -> None:
    token = store.create_token(3).token
    errors: list[BaseException] = []

    def register(member: str) -> None:
        try:
            for i in range(20):
                store.put(token, f"{member}{i}", "x")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(f"m{n}-",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    indexes = [m.created_index for m in store.members(token)]
    assert len(indexes) == 80 and len(set(indexes)) == 80  # every write got an index of its own


def test_watch_matching() -> None:
    assert watch_matches("abc", "abc", False)
    assert watch_matches("abc", "", True)
    assert not watch_matches("abc", "", False)
    assert watch_matches("_config/size", "_config", True)
    assert not watch_matches("_configx", "_config", True)
