from __future__ import annotations

import stat
from pathlib import Path

from quantum_mesh.mesh.identity import load_or_create_keypair, peer_id_from_key_file, peer_id_of


def test_peer_id_is_stable_and_key_file_private(tmp_path: Path) -> None:
    key_file = tmp_path / "deep" / "er" / "node.key"
    first = peer_id_from_key_file(key_file)
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert peer_id_from_key_file(key_file) == first
    assert peer_id_of(load_or_create_keypair(key_file)) == first
    assert first.startswith("12D3KooW")  # Ed25519 identity


def test_distinct_files_give_distinct_peers(tmp_path: Path) -> None:
    assert peer_id_from_key_file(tmp_path / "a.key") != peer_id_from_key_file(tmp_path / "b.key")
