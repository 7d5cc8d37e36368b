"""The cluster's health combined from what each etcd member answered for itself (v3: Flatcar members).

Each member's node says whether its own endpoint is healthy (true only with a leader and a read through raft, so
one healthy member proves a quorum: docs/field-notes.md §4) and lists the members. A member that did not answer
for itself — its node unreachable over SSH, its etcd stopped, no SSH target for it at all — is asked from one node
that did answer, preferably a healthy one: one `endpoint health --endpoints …` for all of them, the only probe
that crosses machines. N members cost N + (the members missing) probes instead of the N² of `--cluster` on every
node, and a healthy cluster none across machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coreos_lab.cluster.health import parsers
from coreos_lab.cluster.health.checks import EtcdAnswer


@dataclass(frozen=True)
class MemberAnswers:
    """Every member a node listed (or that answered), and the health of those that answered for themselves."""

    members: dict[str, parsers.EtcdMember]  # by id, in the order listed
    own: dict[str, parsers.EtcdMemberHealth]  # by id

    @property
    def unanswered(self) -> list[parsers.EtcdMember]:
        """The started members that said nothing for themselves (an unstarted one has no endpoint to ask)."""
        return [m for i, m in self.members.items() if i not in self.own and m.started and m.client_urls]


def gather(answers: Sequence[EtcdAnswer | None]) -> MemberAnswers | None:
    """The v3 members' answers for themselves; None when no node answered as a v3 member."""
    mine = [a for a in answers if a is not None and a.own is not None and a.health is not None]
    if not mine:
        return None
    members: dict[str, parsers.EtcdMember] = {}
    for answer in mine:
        if answer.listing is not None and answer.listing.error is None:
            for member in answer.listing.members:
                members.setdefault(member.id, member)
    own: dict[str, parsers.EtcdMemberHealth] = {}
    for answer in mine:
        assert answer.own is not None and answer.health is not None
        member_id = answer.own.member_id
        listed = members.setdefault(member_id, parsers.EtcdMember(member_id, "", client_urls=(answer.own.endpoint,)))
        health = answer.health
        line = health.members[0] if health.members else None
        detail = "" if health.healthy else (line.detail if line and line.detail else health.error or "unhealthy")
        url = listed.client_urls[0] if listed.client_urls else answer.own.endpoint
        own[member_id] = parsers.EtcdMemberHealth(member_id, health.healthy, url, detail)
    return MemberAnswers(members, own)


def prober(answers: Sequence[EtcdAnswer | None]) -> int | None:
    """The node to ask the silent members from: the first whose own member is healthy (it sees the cluster as its
    quorum does), else the first that answered as a member."""
    ranked = sorted((not a.own_healthy, i) for i, a in enumerate(answers) if a is not None and a.own is not None)
    return ranked[0][1] if ranked else None


def cluster_health(answers: MemberAnswers, probed: parsers.ClusterHealth | None) -> parsers.ClusterHealth:
    """One line per started member: its own answer, else what the probe found, else why nobody could tell."""
    found = {m.url: m for m in probed.members} if probed is not None else {}
    lines: list[parsers.EtcdMemberHealth] = []
    for member_id, member in answers.members.items():
        if member_id in answers.own:
            lines.append(answers.own[member_id])
        elif member.started and member.client_urls:
            url = member.client_urls[0]
            seen = found.get(url)
            why = (probed.error if probed is not None else None) or "did not answer"
            lines.append(seen or parsers.EtcdMemberHealth(member_id, False, url, why))
    return parsers.ClusterHealth(members=tuple(lines))
