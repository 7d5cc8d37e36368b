"""Parsers of the health commands, against recorded real outputs (tests/fixtures/) and against garbage."""

from __future__ import annotations

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


def test_fleet_error_prefers_the_etcd_complaint() -> None:
    err = (
        "Error retrieving list of active machines: googleapi: Error 503: fleet server unable to communicate with etcd\n"
    )
    assert "Error 503" in (parsers.fleet_error("", err) or "")
    assert parsers.fleet_error("", "something else\n") == "something else"


# ---------------------------------------------------------------- garbage never crashes

_TEXT = st.text(max_size=2000) | st.lists(
    st.sampled_from(
        [
            "member ",
            "cluster is healthy",
            "is unreachable: [",
            "http://",
            ":2379",
            " is healthy: ",
            "[",
            "]",
            "{",
            "}",
            '"members":',
            '"ID":',
            '"health":',
            '"endpoint":',
            "\t",
            "\n",
            ", started, ",
            "name=",
            "isLeader=true",
            "[unstarted]",
            "Error:",
            "ff32f4b39b9c47bd",
            "1e400",
            "null",
            "-1",
        ]
    ),
    max_size=60,
).map("".join)

_PARSERS_2 = [
    parsers.parse_v2_cluster_health,
    parsers.parse_v3_endpoint_health_json,
    parsers.parse_v2_member_list,
    parsers.parse_v3_member_list_json,
    parsers.fleet_error,
]
_PARSERS_1 = [
    parsers.parse_v3_endpoint_health_lines,
    parsers.parse_v3_endpoint_status_json,
    parsers.parse_fleet_machines,
]


@settings(max_examples=300, deadline=None)
@given(stdout=_TEXT, stderr=_TEXT)
def test_parsers_never_crash_on_garbage(stdout: str, stderr: str) -> None:
    for parse in _PARSERS_2:
        parse(stdout, stderr)  # type: ignore[operator]
    for parse1 in _PARSERS_1:
        parse1(stdout)


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


@settings(max_examples=300, deadline=None)
@given(document=_JSON)
def test_json_parsers_never_crash_on_odd_json(document: object) -> None:
    import json

    text = json.dumps(document)
    health = parsers.parse_v3_endpoint_health_json(text)
    assert health.healthy in (True, False)
    listing = parsers.parse_v3_member_list_json(text)
    assert all(isinstance(m.id, str) for m in listing.members)
    assert all(isinstance(s.leader_id, str) for s in parsers.parse_v3_endpoint_status_json(text))
