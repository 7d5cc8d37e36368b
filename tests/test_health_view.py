"""The cluster's health combined from what each v3 member says of itself (`cluster/health/view.py`), and each
node's etcd check judged on it, from etcdctl 3.4's recorded answers (tests/fixtures/etcd-3.4). The same runs over
SSH against real members are in test_health_netns.py and test_drill_netns.py."""

from __future__ import annotations

import dataclasses

from test_health_parsers import recorded

from coreos_lab.cluster.health import parsers, view
from coreos_lab.cluster.health.checks import EtcdAnswer, judge_etcd

NODES = ("core-01", "core-02", "core-03")


def member_answer(node: str, health: parsers.ClusterHealth | None = None) -> EtcdAnswer:
    """What a healthy member answers for itself: the recordings made on it, its own health unless given."""
    status_name = "healthy.v3.endpoint-status-json" if node == "core-01" else f"healthy.{node}.v3.endpoint-status-json"
    (own,) = parsers.parse_v3_endpoint_status_json(recorded(status_name)[0])
    listing = parsers.parse_v3_member_list_json(*recorded("healthy.v3.member-list-json")[:2])
    if health is None:
        health = parsers.parse_v3_endpoint_health_json(*recorded("healthy.v3.endpoint-health-json")[:2])
    leader = next(m for m in listing.members if m.id == own.leader_id)
    return EtcdAnswer(health, listing, leader, own=own)


def test_every_member_healthy_for_itself_needs_no_probe() -> None:
    answers = [member_answer(node) for node in NODES]
    gathered = view.gather(answers)
    assert gathered is not None and gathered.unanswered == []
    cluster = view.cluster_health(gathered, None)
    assert sorted(m.url for m in cluster.members) == [f"http://172.17.8.10{i}:2379" for i in (1, 2, 3)]
    for answer in answers:
        result, verdict = judge_etcd(answer, cluster)
        assert (result.status, result.detail, verdict) == ("pass", "3 of 3 members healthy", "healthy")


def test_a_silent_member_is_asked_from_a_healthy_node_and_named() -> None:
    """core-02 said nothing for itself (its etcd down, or no SSH): it is probed from core-01, and the verdict and
    detail are those `endpoint health --cluster` gave on the same degraded cluster."""
    answers = [member_answer("core-01"), None, member_answer("core-03")]
    gathered = view.gather(answers)
    assert gathered is not None
    assert [m.name for m in gathered.unanswered] == ["core-02"]
    assert view.prober(answers) == 0
    probed = parsers.parse_v3_endpoint_health_json(*recorded("degraded.v3.endpoint-health-cluster-json")[:2])
    cluster = view.cluster_health(gathered, probed)
    result, verdict = judge_etcd(answers[0], cluster)
    assert verdict == probed.verdict == "degraded"
    assert (
        result.detail
        == "cluster is degraded: 2 of 3 healthy; not healthy: http://172.17.8.102:2379 context deadline exceeded"
    )


def test_a_member_without_quorum_sees_the_cluster_unavailable_from_its_side() -> None:
    """core-03 cut off: its own read through raft fails, the others' succeed. It is named by the others, which
    see the cluster degraded; from its own side the cluster is unavailable, as etcd says there."""
    cut_off = parsers.ClusterHealth(
        members=(parsers.EtcdMemberHealth("127.0.0.1:2379", False, "127.0.0.1:2379", "context deadline exceeded"),)
    )
    answers = [member_answer("core-01"), member_answer("core-02"), member_answer("core-03", cut_off)]
    gathered = view.gather(answers)
    assert gathered is not None and gathered.unanswered == []
    cluster = view.cluster_health(gathered, None)
    result, verdict = judge_etcd(answers[0], cluster)
    assert verdict == "degraded"
    assert (
        result.detail
        == "cluster is degraded: 2 of 3 healthy; not healthy: http://172.17.8.103:2379 context deadline exceeded"
    )
    result, verdict = judge_etcd(answers[2], cluster)
    assert verdict == "unavailable" and result.status == "fail"
    assert result.detail.startswith("cluster is unavailable from here: http://172.17.8.103:2379 context deadline")
    assert result.detail.endswith("the other members see 2 of 3 healthy")


def test_no_member_healthy_is_unavailable_everywhere() -> None:
    """A majority down: the survivor has no quorum and the others are silent; probed from the survivor, none
    answers: 0 of 3, as `endpoint health --cluster` said on the same cluster."""
    no_quorum = parsers.parse_v3_endpoint_health_json(*recorded("unavailable.v3.endpoint-health-cluster-json")[:2])
    survivor_own = dataclasses.replace(no_quorum, members=no_quorum.members[:1])
    answers = [member_answer("core-01", survivor_own), None, None]
    gathered = view.gather(answers)
    assert gathered is not None and len(gathered.unanswered) == 2
    cluster = view.cluster_health(gathered, no_quorum)
    result, verdict = judge_etcd(answers[0], cluster)
    assert verdict == "unavailable"
    assert result.detail.startswith("cluster is unavailable: 0 of 3 healthy; not healthy: ")


def test_no_v3_member_answering_leaves_the_nodes_their_own_words() -> None:
    assert view.gather([None, None]) is None
    down = EtcdAnswer(parsers.ClusterHealth(error="dial tcp 127.0.0.1:2379: connect: connection refused"), None)
    result, verdict = judge_etcd(down, None)
    assert result.detail == "etcd not answering: dial tcp 127.0.0.1:2379: connect: connection refused"
    assert verdict == "unavailable"
