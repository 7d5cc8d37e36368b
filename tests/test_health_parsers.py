"""Parsers of the health commands, against recorded real outputs (tests/fixtures/) and against garbage."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coreos_lab.cluster.health import parsers

FIXTURES = Path(__file__).parent / "fixtures"


def recorded(name: str) -> tuple[str, str, int]:
    base = FIXTURES / "etcd-3.4" / name
    return (
        base.with_name(name + ".stdout").read_text(),
        base.with_name(name + ".stderr").read_text(),
        int(base.with_name(name + ".rc").read_text()),
    )


# ---------------------------------------------------------------- etcd's verdict on the cluster


@pytest.mark.parametrize(
    ("recording", "verdict"),
    [
        ("healthy", "healthy"),
        ("degraded", "degraded"),  # member 2 down: the other two have a leader and a quorum
        ("unavailable", "unavailable"),  # members 2 and 3 down: the survivor has no leader
        ("down", "unavailable"),  # nothing answers at all
    ],
)
def test_the_verdict_is_etcds_own(recording: str, verdict: str) -> None:
    """v2 and v3 answers of the same cluster give the same verdict, and v2's is the summary etcdctl printed."""
    v2_out, v2_err, _ = recorded(f"{recording}.v2.cluster-health")
    v2 = parsers.parse_v2_cluster_health(v2_out, v2_err)
    v3_out, v3_err, _ = recorded(f"{recording}.v3.endpoint-health-cluster-json")
    v3 = parsers.parse_v3_endpoint_health_json(v3_out, v3_err)
    assert v2.verdict == v3.verdict == verdict
    assert v2.summary in (verdict, None)  # etcdctl printed no summary when it could not list the members


# ---------------------------------------------------------------- v2 cluster-health


def test_v2_healthy() -> None:
    out, err, rc = recorded("healthy.v2.cluster-health")
    health = parsers.parse_v2_cluster_health(out, err)
    assert rc == 0
    assert health.healthy and health.summary == "healthy" and health.error is None
    assert sorted(m.url for m in health.members) == [f"http://172.17.8.10{i}:2379" for i in (1, 2, 3)]


def test_v2_degraded_names_the_unreachable_member() -> None:
    out, err, rc = recorded("degraded.v2.cluster-health")
    health = parsers.parse_v2_cluster_health(out, err)
    assert rc == 5
    assert not health.healthy and health.summary == "degraded"
    assert [(m.member, m.url, m.detail) for m in health.unhealthy_members] == [
        ("25d6ce33763c5524", "http://172.17.8.102:2379", "unreachable")
    ]
    assert len(health.members) == 3  # the "failed to check" line does not count as a member


def test_v2_unavailable() -> None:
    out, err, _ = recorded("unavailable.v2.cluster-health")
    health = parsers.parse_v2_cluster_health(out, err)
    assert health.summary == "unavailable"
    assert {m.member: m.detail for m in health.unhealthy_members} == {
        "25d6ce33763c5524": "unreachable",
        "6ae27f9fa2984b1d": "unhealthy",
        "ff32f4b39b9c47bd": "unreachable",
    }


def test_v2_down_reports_why_from_stderr() -> None:
    out, err, rc = recorded("down.v2.cluster-health")
    health = parsers.parse_v2_cluster_health(out, err)
    assert rc == 4
    assert not health.healthy and health.members == ()
    assert health.error is not None
    assert "failed to list members" in health.error and "connection refused" in health.error


def test_v2_etcd2_healthy_if_any_summary_is_not_trusted() -> None:
    # etcd2 (≤ 3.2) prints the same member lines but sums up "cluster is healthy" when any member is.
    out = (
        "member 25d6ce33763c5524 is unreachable: [http://172.17.8.102:2379] are all unreachable\n"
        "member 6ae27f9fa2984b1d is healthy: got healthy result from http://172.17.8.101:2379\n"
        "member ff32f4b39b9c47bd is unhealthy: got unhealthy result from http://172.17.8.103:2379\n"
        "cluster is healthy\n"
    )
    health = parsers.parse_v2_cluster_health(out)
    assert health.summary == "healthy"
    assert not health.healthy
    assert [m.url for m in health.unhealthy_members] == ["http://172.17.8.102:2379", "http://172.17.8.103:2379"]


# ---------------------------------------------------------------- v3 endpoint health


def test_v3_json_healthy() -> None:
    out, err, _ = recorded("healthy.v3.endpoint-health-cluster-json")
    health = parsers.parse_v3_endpoint_health_json(out, err)
    assert health.healthy and len(health.members) == 3


def test_v3_json_degraded() -> None:
    out, err, rc = recorded("degraded.v3.endpoint-health-cluster-json")
    health = parsers.parse_v3_endpoint_health_json(out, err)
    assert rc == 1 and not health.healthy
    assert [(m.url, m.detail) for m in health.unhealthy_members] == [
        ("http://172.17.8.102:2379", "context deadline exceeded")
    ]


def test_v3_json_unavailable() -> None:
    out, err, _ = recorded("unavailable.v3.endpoint-health-cluster-json")
    health = parsers.parse_v3_endpoint_health_json(out, err)
    assert len(health.unhealthy_members) == 3 and health.error is None


def test_v3_json_down_takes_the_error_line_not_the_log_noise() -> None:
    out, err, _ = recorded("down.v3.endpoint-health-cluster-json")
    health = parsers.parse_v3_endpoint_health_json(out, err)
    assert not health.healthy
    assert health.error == "Error: failed to fetch endpoints from etcd cluster member list: context deadline exceeded"


@pytest.mark.parametrize("state", ["healthy", "degraded"])
def test_v3_plain_lines_come_from_stderr(state: str) -> None:
    out, err, _ = recorded(f"{state}.v3.endpoint-health-cluster")
    assert out == ""
    health = parsers.parse_v3_endpoint_health_lines(err)
    assert len(health.members) == 3
    assert health.healthy is (state == "healthy")
    if state == "degraded":
        assert [m.url for m in health.unhealthy_members] == ["http://172.17.8.102:2379"]
        assert "context deadline exceeded" in health.unhealthy_members[0].detail


# ---------------------------------------------------------------- member list and status


def test_v2_member_list_with_leader() -> None:
    out, err, _ = recorded("healthy.v2.member-list")
    listing = parsers.parse_v2_member_list(out, err)
    assert [m.name for m in listing.members] == ["core-02", "core-01", "core-03"]
    assert listing.leader is not None and listing.leader.name == "core-01"
    assert listing.members[0].peer_urls == ("http://172.17.8.102:2380",)


def test_v2_member_list_unstarted_member() -> None:
    out = (
        "6ae27f9fa2984b1d: name=core-01 peerURLs=http://172.17.8.101:2380 clientURLs=http://172.17.8.101:2379 isLeader=true\n"
        "8211f1d0f64f3269[unstarted]: peerURLs=http://172.17.8.104:2380\n"
    )
    listing = parsers.parse_v2_member_list(out)
    assert [(m.id, m.started) for m in listing.members] == [("6ae27f9fa2984b1d", True), ("8211f1d0f64f3269", False)]


def test_v3_member_list_json_ids_match_the_plain_form() -> None:
    # etcdctl's plain form shows the ids in hex: `id, started, name, peer urls, client urls, is-learner`
    plain = [line.split(", ") for line in recorded("healthy.v3.member-list")[0].splitlines()]
    listing = parsers.parse_v3_member_list_json(recorded("healthy.v3.member-list-json")[0])
    assert {(m.id, m.name) for m in listing.members} == {(fields[0], fields[2]) for fields in plain}


def test_v3_endpoint_status_names_the_leader() -> None:
    statuses = parsers.parse_v3_endpoint_status_json(recorded("healthy.v3.endpoint-status-cluster-json")[0])
    assert {s.leader_id for s in statuses} == {"6ae27f9fa2984b1d"}  # core-01, as the v2 member list says
    assert {s.member_id for s in statuses} == {"25d6ce33763c5524", "6ae27f9fa2984b1d", "ff32f4b39b9c47bd"}


# ---------------------------------------------------------------- fleet


def test_fleet_list_machines_with_legend() -> None:
    machines = parsers.parse_fleet_machines((FIXTURES / "fleet" / "list-machines.stdout").read_text())
    assert [m.ip for m in machines] == [
        "172.31.24.253",
        "172.31.24.254",
        "172.31.17.24",
        "172.31.17.23",
        "172.31.17.22",
    ]
    assert machines[0].metadata == "role=worker"


def test_fleet_list_machines_no_legend_full() -> None:
    out = "23d8bb5c6f0a4b0e9c1d2e3f4a5b6c7d\t172.17.8.101\t-\n5a06ff68d1c14e9fa0b1c2d3e4f5a6b7\t172.17.8.102\t-\n"
    assert [(m.machine[:8], m.ip) for m in parsers.parse_fleet_machines(out)] == [
        ("23d8bb5c", "172.17.8.101"),
        ("5a06ff68", "172.17.8.102"),
    ]


def test_fleet_list_machines_of_a_coreos_vagrant_cluster() -> None:
    machines = parsers.parse_fleet_machines((FIXTURES / "fleet" / "list-machines.coreos-vagrant.stdout").read_text())
    assert [(m.machine, m.ip) for m in machines] == [
        ("113f16a7...", "172.17.8.103"),
        ("85c0c595...", "172.17.8.102"),
        ("e793afb9...", "172.17.8.101"),
    ]


@pytest.mark.parametrize(
    "recorded_failure",
    ["fleet-0.x.etcd-503", "fleet-0.x.no-fleetd", "fleet-1.0.etcd-503", "fleet-1.0.no-fleetd", "fleet-1.0.http-404"],
)
def test_fleet_error_is_the_error_line_not_fleets_generic_hints(recorded_failure: str) -> None:
    """fleet 1.0 follows every list-machines error with "Possible issues: etcd is unhealthy and/or lost quorum …",
    whatever went wrong; the line that says what did is the first."""
    stderr = (FIXTURES / "fleet" / f"list-machines.{recorded_failure}.stderr").read_text()
    assert (FIXTURES / "fleet" / f"list-machines.{recorded_failure}.rc").read_text().strip() == "1"
    assert parsers.fleet_error("", stderr) == stderr.splitlines()[0]
    assert parsers.fleet_error("", "something else\n") == "something else"


# ---------------------------------------------------------------- garbage is never reported healthy

# Lines in the formats the parsers read, with states, ids and URLs drawn from small sets (so that the same member
# comes up more than once), mixed with arbitrary text.
_ID = st.sampled_from(["25d6ce33763c5524", "6ae27f9fa2984b1d", "ff32f4b39b9c47bd"])
_URL = st.sampled_from(["http://172.17.8.101:2379", "http://172.17.8.102:2379", "127.0.0.1:2379", "", "x y"])
_STATE = st.sampled_from(["healthy", "unhealthy", "unreachable", "degraded", "unavailable", ""])
_FORMATTED_LINE = st.one_of(
    st.builds("member {} is {}: got {} result from {}".format, _ID, _STATE, _STATE, _URL),
    st.builds("member {} is {}: [{}] are all unreachable".format, _ID, _STATE, _URL),
    st.builds("failed to check the health of member {} on {}: Get {}/health".format, _ID, _URL, _URL),
    st.builds("cluster is {}".format, _STATE),
    st.builds("cluster may be {}: failed to list members".format, _STATE),
    st.builds("{} is {}: successfully committed proposal: took = 2ms".format, _URL, _STATE),
    st.builds("{} is {}: failed to commit proposal: context deadline exceeded".format, _URL, _STATE),
    st.builds(
        "{}{}: name=core-01 peerURLs={} clientURLs={} isLeader={}".format,
        _ID,
        st.sampled_from(["", "[unstarted]"]),
        _URL,
        _URL,
        st.sampled_from(["true", "false"]),
    ),
    st.builds(
        "{}\t{}\t{}".format,
        st.sampled_from(["113f16a7...", "e793afb9c1d24d6fb4e1c2a3d4e5f6a7", "MACHINE", "hello", " ", ""]),
        st.sampled_from(["172.17.8.101", "fe80::1", "-", "IP", "x y", " ", ""]),
        st.sampled_from(["-", "role=services", ""]),
    ),
    st.just("Error:  client: etcd cluster is unavailable or misconfigured"),
    st.text(max_size=80),
)
_LINES = st.lists(st.tuples(st.sampled_from(["", " ", "\t"]), _FORMATTED_LINE), max_size=12).map(
    lambda lines: "\n".join(indent + line for indent, line in lines)
)
_FRAGMENTS = st.lists(
    st.sampled_from(
        ["member ", "cluster is healthy", "is unreachable: [", "http://", ":2379", " is healthy: ", "[", "]", "{", "}",
         '"members":', '"ID":', '"health":', '"endpoint":', "\t", "\n", ", started, ", "name=", "isLeader=true",
         "[unstarted]", "Error:", "ff32f4b39b9c47bd", "1e400", "null", "-1"]
    ),
    max_size=60,
).map("".join)  # fmt: skip
_TEXT = _LINES | _FRAGMENTS | st.text(max_size=2000)

_V2_SAYS_HEALTHY = re.compile(r"^member [0-9a-f]+ is healthy: ")
_V2_SAYS_NOT_HEALTHY = re.compile(r"^member [0-9a-f]+ is (?:unhealthy|unreachable): |failed to list members")
_V3_SAYS_HEALTHY = re.compile(r"^\S+ is healthy: ")
_V3_SAYS_NOT_HEALTHY = re.compile(r"^\S+ is unhealthy: ")
_FLEET_MACHINE_ID = re.compile(r"^[0-9a-f]{8,32}(?:\.\.\.)?$")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def _is_ip_or_dash(text: str) -> bool:
    try:
        return text == "-" or bool(ipaddress.ip_address(text))
    except ValueError:
        return False


def _assert_verdict_is_earned(health: parsers.ClusterHealth, says_healthy: bool, says_not_healthy: bool) -> None:
    """Healthy only with at least one member, none of them unhealthy, and no line of the text saying otherwise;
    and the health check's own verdict (no error, no unhealthy member) is the same."""
    if health.healthy:
        assert health.members and not health.unhealthy_members and health.error is None
        assert says_healthy and not says_not_healthy
    assert health.healthy == (health.error is None and not health.unhealthy_members)


@settings(max_examples=300, deadline=None)
@given(stdout=_TEXT, stderr=_TEXT)
def test_garbage_is_never_reported_healthy(stdout: str, stderr: str) -> None:
    v2 = parsers.parse_v2_cluster_health(stdout, stderr)
    lines = _lines(stdout)
    _assert_verdict_is_earned(
        v2, any(map(_V2_SAYS_HEALTHY.match, lines)), any(_V2_SAYS_NOT_HEALTHY.search(line) for line in lines)
    )
    v3 = parsers.parse_v3_endpoint_health_lines(stderr)
    lines = _lines(stderr)
    _assert_verdict_is_earned(v3, any(map(_V3_SAYS_HEALTHY.match, lines)), any(map(_V3_SAYS_NOT_HEALTHY.match, lines)))
    # fleet: only rows with a machine id and an address (or fleet's "-" for none) count as machines, each once.
    machines = parsers.parse_fleet_machines(stdout)
    rows = [line.split("\t") for line in _lines(stdout)]
    assert len(machines) <= sum(1 for row in rows if len(row) >= 2)
    for machine in machines:
        assert _FLEET_MACHINE_ID.match(machine.machine) and _is_ip_or_dash(machine.ip)
    # The others: their own properties are checked on recorded outputs above; here, garbage does not crash them.
    parsers.parse_v2_member_list(stdout, stderr)
    parsers.parse_v3_member_list_json(stdout, stderr)
    parsers.parse_v3_endpoint_status_json(stdout)
    parsers.parse_v3_endpoint_health_json(stdout, stderr)
    error = parsers.fleet_error(stdout, stderr)
    assert error is None or error in {" ".join(line.split()) for line in _lines(f"{stderr}\n{stdout}")} | set(
        _lines(f"{stderr}\n{stdout}")
    )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["members", "ID", "name", "peerURLs", "endpoint", "health", "Status", "header", "leader"])
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)
_ENDPOINT_HEALTH = st.fixed_dictionaries(
    {"endpoint": _URL | st.integers(), "health": st.sampled_from([True, False, "true", "false", None, 1])},
    optional={"took": st.just("2ms"), "error": st.sampled_from(["context deadline exceeded", ""])},
)

_MEMBER_LIST = st.fixed_dictionaries(
    {
        "members": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "ID": st.integers(min_value=0) | st.text(max_size=5),
                    "name": st.sampled_from(["core-01", "", None, 3]),
                    "peerURLs": st.lists(_URL, max_size=2),
                },
            )
            | _JSON,
            max_size=4,
        )
    }
)


@settings(max_examples=300, deadline=None)
@given(document=_JSON | st.lists(_ENDPOINT_HEALTH | _JSON, max_size=5) | _MEMBER_LIST)
def test_odd_json_is_never_reported_healthy(document: object) -> None:
    health = parsers.parse_v3_endpoint_health_json(json.dumps(document))
    endpoints = [
        item for item in (document if isinstance(document, list) else [])
        if isinstance(item, dict) and isinstance(item.get("endpoint"), str)
    ]  # fmt: skip
    says_healthy = bool(endpoints)
    says_not_healthy = any(item.get("health") not in (True, "true") for item in endpoints)
    _assert_verdict_is_earned(health, says_healthy, says_not_healthy)
    # A member is started only when it has a name (an unstarted one has none yet).
    listing = parsers.parse_v3_member_list_json(json.dumps(document))
    raw = document.get("members") if isinstance(document, dict) else None
    named = [item for item in raw if isinstance(item, dict)] if isinstance(raw, list) else []
    assert [m.started for m in listing.members] == [isinstance(i.get("name"), str) and bool(i["name"]) for i in named]
    assert all(isinstance(s.leader_id, str) for s in parsers.parse_v3_endpoint_status_json(json.dumps(document)))
