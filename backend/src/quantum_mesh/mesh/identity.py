"""Persistent node identities: an Ed25519 key file gives a peer ID stable across restarts.

Because the peer ID is derived from the key alone, an operator can create the key and
enroll the peer ID before the node first runs.
"""

from __future__ import annotations

from pathlib import Path

from libp2p import generate_new_ed25519_identity, load_identity, save_identity
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID


def load_or_create_keypair(path: Path) -> KeyPair:
    """Load the identity at ``path``, creating it (mode 0600, parents included) if missing."""
    path = Path(path)
    if path.exists():
        return load_identity(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key_pair = generate_new_ed25519_identity()
    save_identity(key_pair, path)
    path.chmod(0o600)
    return key_pair


def peer_id_of(key_pair: KeyPair) -> str:
    return ID.from_pubkey(key_pair.public_key).to_base58()


def peer_id_from_key_file(path: Path) -> str:
    """The base58 peer ID of the identity at ``path`` (created if missing)."""
    return peer_id_of(load_or_create_keypair(path))
