"""Node-to-node link probes: real libp2p hosts on 127.0.0.1, libp2p's standard ping."""

from __future__ import annotations

from pathlib import Path

import trio
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from quantum_mesh.mesh.host import run_mesh_host
from quantum_mesh.mesh.identity import load_or_create_keypair
from quantum_mesh.node.links import FORGET_AFTER_S, MAX_LINKS, LinkProber, probe


async def _probe_between_two_hosts(tmp: str) -> tuple[float | None, float | None]:
    keys = [load_or_create_keypair(Path(tmp) / f"{name}.key") for name in ("a", "b", "gone")]
    async with (
        run_mesh_host(key_pair=keys[0], listen_host="127.0.0.1", listen_port=0) as a,
        run_mesh_host(key_pair=keys[1], listen_host="127.0.0.1", listen_port=0) as b,
    ):
        b_addrs = [Multiaddr(addr.rsplit("/p2p/", 1)[0]) for addr in b.listen_addrs()]
        reached = await probe(a.host, ID.from_base58(b.peer_id), b_addrs)
        # A node that is not running: no round trip, and no error either.
        gone = ID.from_pubkey(keys[2].public_key)
        unreachable = await probe(a.host, gone, [Multiaddr("/ip4/127.0.0.1/tcp/9")])
        return reached, unreachable


def test_probe_times_a_real_round_trip_and_reports_a_dead_link_as_none(tmp_path: object) -> None:
    reached, unreachable = trio.run(_probe_between_two_hosts, str(tmp_path))
    assert reached is not None and 0 < reached < 1000
    assert unreachable is None


def test_links_list_recently_heard_nodes_only_never_itself_and_are_bounded() -> None:
    prober = LinkProber("self")
    prober.heard("self", ["/ip4/127.0.0.1/tcp/1"], now=0.0)
    for i in range(MAX_LINKS + 4):
        prober.heard(f"peer{i}", ["/ip4/127.0.0.1/tcp/2"], now=0.0)
        prober._peers[f"peer{i}"].rtt_ms = 1.0 + i  # what a probe round measured
    links = prober.links(now=1.0)
    assert "self" not in links and len(links) == MAX_LINKS
    assert min(links.values()) == 1.0  # the fastest are kept
    assert prober.links(now=FORGET_AFTER_S + 1.0) == {}  # not heard for too long
