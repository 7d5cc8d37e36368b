"""How a lab's etcd finds its members: a discovery token (kept for the cluster's life, minted for a new cluster,
retired for good; see `coreos_lab.lab.state`) or a static member list.

Tokens are minted by the discovery client: in the local store the mirror server serves (`discovery.mode:
local`) or by a public service's `/new` (`public`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coreos_lab.discovery.client import create_token, new_token, token_of
from coreos_lab.errors import BadInput, LabError
from coreos_lab.lab.model import LabConfig
from coreos_lab.lab.state import LabState, LabToken

PUBLIC_TOKEN_TIMEOUT = 15.0


@dataclass(frozen=True)
class Discovery:
    mode: str  # local | public | static
    url: str | None  # the guest-reachable token URL (local/public)
    initial_cluster: str  # static mode: name=peerURL,… of the etcd members

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "url": self.url, "initial_cluster": self.initial_cluster}


PROVISIONAL_TOKEN = "0" * 32  # stands in for a token not minted yet, in a trial render


def discovery_for(
    config: LabConfig, state: LabState, before_minting: Callable[[Discovery], object] | None = None
) -> tuple[Discovery, str]:
    """The discovery settings to render and what happened to the token: kept | new | none.

    Raises `BadInput` when lab.yaml asks for a different token than the existing cluster's. A new token is minted
    only after `before_minting` passed with a provisional one: a render that fails (a broken template) must not
    have spent a token first, which a public service would keep and the lab's state would orphan.
    """
    members = [n for n in config.nodes if n.etcd_member]
    initial = ",".join(f"{n.name}={n.peer_url}" for n in members)
    mode = config.discovery_mode
    server = config.mirror_url if mode == "local" else str(config["discovery.url"]).rstrip("/")
    current = state.token
    guest_base = config.guest_mirror_url if mode == "local" else server
    if (
        current is not None
        and (current.mode, current.size, current.server) == (mode, len(members), server)
        and current.guest_url.startswith(guest_base + "/")
    ):
        return Discovery(mode, current.guest_url, initial), "kept"
    if state.cluster_exists and (current is not None or mode != "static"):
        was = "a static member list"
        if current is not None:
            was = f"a {current.mode} discovery token for {current.size} etcd members at {current.guest_url}"
        wanted = "a static member list"
        if mode != "static":
            wanted = f"a {mode} discovery token for {len(members)} etcd members at {guest_base}"
        raise BadInput(
            f"the cluster exists and was created with {was}; lab.yaml now asks for {wanted}",
            hint="destroy the cluster first (`lab destroy`), or change lab.yaml back",
        )
    state.retire_token()  # its cluster never existed, but etcd may have registered with it: never reuse
    if mode == "static":
        return Discovery(mode, None, initial), "none"
    if before_minting is not None:
        before_minting(Discovery(mode, f"{guest_base}/{PROVISIONAL_TOKEN}", initial))
    token = mint_token(config, len(members), server)
    state.set_token(token)
    return Discovery(mode, token.guest_url, initial), "new"


def mint_token(config: LabConfig, size: int, server: str) -> LabToken:
    if config.discovery_mode == "local":
        token = create_token(config.mirror_root, size)
        return LabToken(
            token=token,
            url=f"{server}/{token}",
            guest_url=f"{config.guest_mirror_url}/{token}",
            size=size,
            mode="local",
            server=server,
        )
    try:
        url = new_token(server, size, PUBLIC_TOKEN_TIMEOUT)
    except LabError as exc:
        # The client's hint speaks of its own flags; here lab.yaml chose the service.
        exc.hint = "check discovery.url in lab.yaml, or use discovery.mode local (served with the mirror)"
        raise
    return LabToken(token=token_of(url), url=url, guest_url=url, size=size, mode="public", server=server)
