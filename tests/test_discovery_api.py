"""The discovery protocol over real HTTP (the server's aiohttp app on a loopback port), as etcd's v2
discovery client and discovery.etcd.io's users speak it (docs/field-notes.md §5)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from harness.waiting import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coreos_lab.discovery.api import DISCOVERY_KEY, READ_THREADS, DiscoveryService
from coreos_lab.discovery.store import TOKEN_RE, DiscoveryStore, KeyNode
from coreos_lab.server import EmbeddedServer

pytestmark = pytest.mark.integration

WAIT_TIMEOUT = 0.5


@pytest.fixture
def server(mirror_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedServer]:
    monkeypatch.setenv("LAB_DISCOVERY_WAIT_TIMEOUT", str(WAIT_TIMEOUT))
    with EmbeddedServer(mirror_root, port=0) as srv:
        yield srv


def new_token(server: EmbeddedServer, size: int = 3) -> str:
    response = requests.get(f"{server.url}/new", params={"size": size}, timeout=5)
    assert response.status_code == 200, response.text
    return response.text


def register(token_url: str, member: str, value: str) -> requests.Response:
    return requests.put(f"{token_url}/{member}", params={"prevExist": "false"}, data={"value": value}, timeout=5)


def index_of(response: requests.Response) -> int:
    return int(response.headers["X-Etcd-Index"])


def test_new_answers_a_token_url_as_plain_text(server: EmbeddedServer) -> None:
    response = requests.get(f"{server.url}/new", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    base, _, token = response.text.rpartition("/")
    assert base == server.url and TOKEN_RE.match(token)
    size = requests.get(f"{response.text}/_config/size", timeout=5).json()
    assert size["action"] == "get" and size["node"]["value"] == "3"  # discovery.etcd.io's default
    assert size["node"]["key"] == f"/{token}/_config/size"


@pytest.mark.parametrize("size", ["0", "100", "-1", "three", "", "3.5", "\u00b2", "\u0663", "+3", " 3", "9" * 30])
def test_new_rejects_bad_sizes_with_a_reason(server: EmbeddedServer, size: str) -> None:
    response = requests.get(f"{server.url}/new", params={"size": size}, timeout=5)
    assert response.status_code == 400
    assert "invalid size" in response.text and "1-99" in response.text
    assert "X-Etcd-Index" in response.headers


@pytest.mark.parametrize("size", [1, 99])
def test_new_accepts_the_range_ends(server: EmbeddedServer, size: int) -> None:
    token_url = new_token(server, size)
    assert requests.get(f"{token_url}/_config/size", timeout=5).json()["node"]["value"] == str(size)


def test_register_then_duplicate_is_412_with_105(server: EmbeddedServer) -> None:
    token_url = new_token(server)
    token = token_url.rsplit("/", 1)[1]
    created = register(token_url, "8e9e05c52164694d", "m1=http://127.0.0.1:2380")
    assert created.status_code == 201
    body = created.json()
    assert body["action"] == "create"
    assert body["node"] == {
        "key": f"/{token}/8e9e05c52164694d",
        "value": "m1=http://127.0.0.1:2380",
        "modifiedIndex": index_of(created),
        "createdIndex": index_of(created),
    }
    duplicate = register(token_url, "8e9e05c52164694d", "m1=http://127.0.0.1:2999")
    assert duplicate.status_code == 412
    assert duplicate.json()["errorCode"] == 105
    assert duplicate.json()["cause"] == f"/{token}/8e9e05c52164694d"
    assert index_of(duplicate) == index_of(created)  # nothing was written
    listing = requests.get(token_url, timeout=5).json()["node"]
    assert listing["dir"] is True
    assert [n["value"] for n in listing["nodes"]] == ["m1=http://127.0.0.1:2380"]  # `_config` is never listed


def test_head_new_answers_like_get_but_creates_no_token(server: EmbeddedServer) -> None:
    store = server.app[DISCOVERY_KEY].store
    head = requests.head(f"{server.url}/new", params={"size": 3}, timeout=5)
    assert head.status_code == 200 and head.headers["Content-Type"].startswith("text/plain")
    assert store.tokens() == [] and index_of(head) == 0
    assert requests.head(f"{server.url}/new", params={"size": 0}, timeout=5).status_code == 400
    assert requests.post(f"{server.url}/new", timeout=5).status_code == 405
    assert store.tokens() == []


@pytest.mark.parametrize("wait_index", [str(2**63), "9" * 40, "\u0663", "\u00b2", "-1", "1.0", ""])
def test_a_wait_index_that_is_no_index_is_400(server: EmbeddedServer, wait_index: str) -> None:
    token_url = new_token(server)
    response = requests.get(token_url, params={"wait": "true", "waitIndex": wait_index}, timeout=5)
    assert response.status_code == 400 and response.json()["errorCode"] == 209, response.text
    assert "waitIndex" in response.json()["cause"]


def is_decimal(text: str, low: int, high: int) -> bool:
    return text.isascii() and text.isdecimal() and low <= int(text) <= high


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(number=st.one_of(st.text(max_size=25), st.integers(min_value=-5, max_value=2**64).map(str)))
def test_query_numbers_are_ascii_decimals_in_range_and_never_a_5xx(server: EmbeddedServer, number: str) -> None:
    """Whatever the text, `/new?size=` and `waitIndex=` are taken only as an ASCII decimal in range (400
    otherwise), and never end in a server error."""
    new = requests.head(f"{server.url}/new", params={"size": number}, timeout=5)
    assert new.status_code == (200 if is_decimal(number, 1, 99) else 400)
    store = server.app[DISCOVERY_KEY].store
    token_url = f"{server.url}/{store.tokens()[0].token}" if store.tokens() else new_token(server, 1)
    # Recursive: an index up to the token's creation is answered from history; a later one waits WAIT_TIMEOUT.
    params = {"wait": "true", "recursive": "true", "waitIndex": number}
    watch = requests.get(token_url, params=params, timeout=30)
    assert watch.status_code == (200 if is_decimal(number, 0, 2**63 - 1) else 400), watch.text


def test_unknown_token_is_404_with_100(server: EmbeddedServer) -> None:
    new_token(server)
    for path in ("", "/_config/size", "/8e9e05c52164694d"):
        response = requests.get(f"{server.url}/{'a' * 32}{path}", timeout=5)
        assert response.status_code == 404
        error = response.json()
        assert error["errorCode"] == 100 and error["message"] == "Key not found"
        assert error["cause"] == f"/{'a' * 32}{path}"
        assert error["index"] == index_of(response) >= 1
    put = register(f"{server.url}/{'a' * 32}", "8e9e05c52164694d", "m1=http://x:2380")
    assert put.status_code == 404 and put.json()["errorCode"] == 100


def test_every_answer_carries_the_etcd_index(server: EmbeddedServer) -> None:
    token_url = new_token(server)
    answers = [
        requests.get(f"{server.url}/new", params={"size": 2}, timeout=5),
        requests.get(f"{server.url}/new", params={"size": 0}, timeout=5),
        requests.get(token_url, timeout=5),
        requests.get(f"{token_url}/_config", timeout=5),
        requests.head(f"{token_url}/_config/size", timeout=5),
        register(token_url, "aaa", "m1=http://x:2380"),
        register(token_url, "aaa", "m1=http://x:2380"),
        requests.put(f"{token_url}/_config/size", data={"value": "9"}, timeout=5),
        requests.put(f"{token_url}/aaa", params={"ttl": "30"}, data={"value": "x"}, timeout=5),
        requests.delete(f"{token_url}/aaa", timeout=5),
        requests.get(f"{token_url}/aaa", params={"wait": "true", "waitIndex": "1"}, timeout=5),
        requests.get(f"{token_url}", params={"wait": "true", "recursive": "true"}, timeout=5),
    ]
    assert [r.status_code for r in answers] == [200, 400, 200, 200, 200, 201, 412, 403, 400, 405, 200, 200]
    assert all(index_of(r) >= 1 for r in answers)
    assert requests.get(f"{token_url}/_config/size", timeout=5).json()["node"]["value"] == "3"


def test_wait_index_is_replayed_from_history(server: EmbeddedServer) -> None:
    token_url = new_token(server)
    first = register(token_url, "aaa", "m1=http://x:2380")
    second = register(token_url, "bbb", "m2=http://x:2381")
    first_index = first.json()["node"]["createdIndex"]
    # etcd's client does exactly this right after registering: watch its own key from createdIndex.
    own = requests.get(f"{token_url}/aaa", params={"wait": "true", "waitIndex": first_index}, timeout=5)
    assert own.status_code == 200
    assert own.json()["action"] == "create" and own.json()["node"]["value"] == "m1=http://x:2380"
    later = requests.get(
        token_url, params={"wait": "true", "recursive": "true", "waitIndex": first_index + 1}, timeout=5
    )
    assert later.json()["node"] == second.json()["node"]


def test_a_listing_and_its_index_come_from_one_snapshot(server: EmbeddedServer) -> None:
    """A registration that commits while a GET lists the members is either in the listing or after its index.

    etcd's discovery client lists the token, then watches from the answer's X-Etcd-Index + 1: an index that
    already covers a member missing from the listing leaves the client "waiting for 1 more" forever. The
    registration is made to commit right after the listing is read, from another connection, as the writer
    thread's would."""
    token_url = new_token(server)
    token = token_url.rsplit("/", 1)[1]
    register(token_url, "aaa", "m1=http://x:2380")
    store = server.app[DISCOVERY_KEY].store
    other = DiscoveryStore(store.state_dir)
    list_members = store.members
    interleaved: list[int] = []

    def members_then_a_registration(listed_token: str) -> list[KeyNode]:
        listed = list_members(listed_token)
        if not interleaved:
            interleaved.append(other.put(token, "bbb", "m2=http://x:2381", prev_exist=False).index)
        return listed

    store.members = members_then_a_registration  # type: ignore[method-assign]
    try:
        listing = requests.get(token_url, timeout=5)
    finally:
        del store.members
        other.close()
    assert interleaved, "the registration was not made while the members were listed"
    assert [node["key"] for node in listing.json()["node"]["nodes"]] == [f"/{token}/aaa"]
    assert index_of(listing) < interleaved[0]
    # What etcd's client does next: the registration it did not list is the first thing its watch sees.
    after = requests.get(
        token_url, params={"wait": "true", "recursive": "true", "waitIndex": index_of(listing) + 1}, timeout=5
    )
    assert after.json()["node"]["key"] == f"/{token}/bbb"


def test_long_poll_wakes_as_soon_as_a_member_registers(mirror_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Far beyond the client's own timeout: only the write can end this poll with an answer.
    monkeypatch.setenv("LAB_DISCOVERY_WAIT_TIMEOUT", "600")
    with EmbeddedServer(mirror_root, port=0) as srv, ThreadPoolExecutor(1) as pool:
        service = srv.app[DISCOVERY_KEY]
        token_url = new_token(srv)
        after = index_of(register(token_url, "aaa", "m1=http://x:2380"))
        waiting = pool.submit(
            requests.get, token_url, params={"wait": "true", "recursive": "true", "waitIndex": after + 1}, timeout=120
        )
        wait_until(lambda: service.pending_watches == 1, "the long poll parked on the server")
        assert not waiting.done()
        register(token_url, "bbb", "m2=http://x:2381")
        woke = waiting.result(timeout=120)
    assert woke.status_code == 200
    # The write's event, not the empty answer of a timeout: the write woke the poll.
    assert woke.json()["action"] == "create" and woke.json()["node"]["key"].endswith("/bbb")
    assert service.pending_watches == 0


def test_wait_timeout_answers_an_empty_200(server: EmbeddedServer) -> None:
    token_url = new_token(server)
    started = time.monotonic()
    response = requests.get(token_url, params={"wait": "true", "recursive": "true", "waitIndex": 99}, timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.content == b""
    assert "X-Etcd-Index" in response.headers
    assert elapsed >= WAIT_TIMEOUT * 0.9  # held for the wait timeout (less timer slack), not answered at once


def test_many_waiters_cost_no_threads_and_all_wake_on_one_write(
    mirror_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAB_DISCOVERY_WAIT_TIMEOUT", "30")
    waiters = 300

    async def scenario(service: DiscoveryService, token_url: str) -> tuple[int, list[str]]:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def wait() -> str:
                params = {"wait": "true", "recursive": "true"}
                async with session.get(token_url, params=params) as response:
                    return str((await response.json())["node"]["key"])

            tasks = [asyncio.create_task(wait()) for _ in range(waiters)]
            while service.pending_watches < waiters:  # every poll is parked on the server
                await asyncio.sleep(0.05)
            threads_while_waiting = threading.active_count()
            async with session.put(f"{token_url}/ccc", params={"prevExist": "false"}, data={"value": "m3=x"}) as r:
                assert r.status == 201
            keys = await asyncio.wait_for(asyncio.gather(*tasks), 120)  # a bound on hangs only
            return threads_while_waiting, keys

    with EmbeddedServer(mirror_root, port=0) as srv:
        service = srv.app[DISCOVERY_KEY]
        threads_before = threading.active_count()
        token_url = requests.get(f"{srv.url}/new", timeout=5).text
        during, keys = asyncio.run(scenario(service, token_url))
    # The store's fixed threads (readers and the writer), and the test's own loop may add a resolver thread; not
    # one per waiter.
    assert during <= threads_before + READ_THREADS + 1 + 2
    assert len(keys) == waiters and set(keys) == {f"/{token_url.rsplit('/', 1)[1]}/ccc"}
    assert service.pending_watches == 0


def test_a_registered_member_survives_a_server_restart(mirror_root: Path) -> None:
    with EmbeddedServer(mirror_root, port=0) as first:
        token_url = new_token(first)
        token = token_url.rsplit("/", 1)[1]
        created = register(token_url, "aaa", "m1=http://x:2380").json()["node"]
    with EmbeddedServer(mirror_root, port=0) as second:
        again = f"{second.url}/{token}"
        assert requests.get(f"{again}/aaa", timeout=5).json()["node"] == created
        assert register(again, "aaa", "m1=http://x:2380").status_code == 412
        assert register(again, "bbb", "m2=http://x:2381").json()["node"]["createdIndex"] > created["createdIndex"]


def test_stopping_the_server_answers_pending_polls(mirror_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Far beyond the client's own timeout: only the shutdown can end this poll with an answer.
    monkeypatch.setenv("LAB_DISCOVERY_WAIT_TIMEOUT", "600")
    srv = EmbeddedServer(mirror_root, port=0).start()
    try:
        service = srv.app[DISCOVERY_KEY]
        token_url = new_token(srv)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(requests.get, token_url, params={"wait": "true", "recursive": "true"}, timeout=120)
            wait_until(lambda: service.pending_watches == 1, "the long poll parked on the server")
            srv.stop()
            response = waiting.result(timeout=120)
    finally:
        srv.stop()
    assert response.status_code == 200 and response.content == b""  # the client simply polls again
    assert service.pending_watches == 0


def test_new_uses_a_fixed_base_url_when_the_server_has_one(mirror_root: Path) -> None:
    with EmbeddedServer(mirror_root, port=0, base_url="http://10.0.2.2:8080") as srv:
        token_url = requests.get(f"{srv.url}/new", timeout=5).text
    assert token_url.startswith("http://10.0.2.2:8080/") and TOKEN_RE.match(token_url.rsplit("/", 1)[1])


def test_tokens_older_than_the_max_age_are_collected(mirror_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from coreos_lab.discovery.store import DiscoveryStore
    from coreos_lab.paths import discovery_dir

    store = DiscoveryStore(discovery_dir(mirror_root))
    old = store.create_token(3, now=time.time() - 7200).token
    young = store.create_token(3).token
    store.close()
    monkeypatch.setenv("LAB_DISCOVERY_TOKEN_MAX_AGE", "3600")
    with EmbeddedServer(mirror_root, port=0) as srv:
        assert requests.get(f"{srv.url}/{old}", timeout=5).json()["errorCode"] == 100
        assert requests.get(f"{srv.url}/{young}", timeout=5).status_code == 200


@pytest.mark.parametrize("variable", ["LAB_DISCOVERY_WAIT_TIMEOUT", "LAB_DISCOVERY_TOKEN_MAX_AGE"])
@pytest.mark.parametrize("value", ["soon", "nan", "inf", "-inf", "-1", "0", "1e3", "\u0663", "1e400", "10000000000"])
def test_bad_environment_settings_name_the_variable(
    mirror_root: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    from coreos_lab.errors import BadInput

    monkeypatch.setenv(variable, value)
    with pytest.raises(BadInput, match=f"{variable}={value!r}"), EmbeddedServer(mirror_root, port=0):
        pass
