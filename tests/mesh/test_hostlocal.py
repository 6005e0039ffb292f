"""Big arrays between processes of one host travel through shared-memory files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from quantum_mesh.mesh import hostlocal, packing
from quantum_mesh.mesh.errors import FrameTooLarge, ProtocolError

pytestmark = pytest.mark.skipif(hostlocal.host_key() is None, reason="no /dev/shm here")

MIB = 1 << 20


def ours() -> set[str]:
    directory = hostlocal.spill_dir()
    assert directory is not None
    return {n for n in os.listdir(directory) if n.startswith("qmesh-")}


def spill(limit: int = 64 * MIB) -> hostlocal.Spill:
    made = hostlocal.spill_for(hostlocal.host_key(), limit=limit)
    assert made is not None
    return made


def test_big_arrays_spill_small_ones_stay_inline_and_reading_removes_the_file() -> None:
    before = ours()
    big = np.random.default_rng(1).normal(size=2**17) + 1j  # 2 MiB of complex128
    small = np.arange(5, dtype=np.int64)
    sent = spill()
    body = packing.pack({"state": big, "small": small, "nested": [{"m": big.real}]}, spill=sent)
    assert len(body) < 1000  # names and headers only
    assert len(sent.paths) == 2 and sent.spilled_bytes == big.nbytes + big.real.nbytes
    deferred = packing.unpack(body, spilled="defer")
    assert isinstance(deferred["state"], hostlocal.SpilledArray)
    got = hostlocal.materialize(deferred)
    assert np.array_equal(got["state"], big) and got["state"].dtype == np.complex128
    assert np.array_equal(got["nested"][0]["m"], big.real)
    assert np.array_equal(got["small"], small)
    assert ours() == before  # each file was unlinked once read
    sent.discard()  # the sender's clean-up after the call tolerates files already taken


def test_a_peer_never_offered_shared_memory_cannot_send_spilled_arrays() -> None:
    sent = spill()
    body = packing.pack({"state": np.zeros(MIB // 8)}, spill=sent)
    with pytest.raises(ProtocolError, match="not offered shared memory"):
        packing.unpack(body)
    names = {p.name for p in sent.paths}
    sent.discard()
    assert not names & ours()


def test_names_outside_our_directory_and_wrong_sizes_are_refused() -> None:
    dtype = np.dtype("<f8")
    for name in ("../../etc/passwd", "qmesh-zz", "qmesh-" + "0" * 31 + "/"):
        with pytest.raises(ProtocolError, match="cannot be read"):
            hostlocal.read_spilled(name, dtype, (4,))
    with pytest.raises(ProtocolError, match="not on this host"):
        hostlocal.read_spilled("qmesh-" + "0" * 32, dtype, (4,))
    sent = spill()
    body = packing.pack({"a": np.ones(MIB // 8)}, spill=sent)
    ref = packing.unpack(body, spilled="defer")["a"]
    with pytest.raises(ProtocolError, match="not the 16 announced"):
        hostlocal.read_spilled(ref.name, dtype, (2,))
    assert ref.name not in ours()  # a bad file is not left behind either


def test_spilled_bytes_have_the_frame_limit_and_a_refused_message_leaves_no_files() -> None:
    before = ours()
    sent = spill(limit=3 * MIB)
    with pytest.raises(FrameTooLarge):
        packing.pack({"a": np.zeros(MIB // 4), "b": np.zeros(MIB // 4)}, spill=sent)
    assert ours() == before


def test_peers_with_another_key_get_no_spill_and_sweep_removes_old_files() -> None:
    assert hostlocal.spill_for("another-host:1:2", limit=MIB) is None
    assert hostlocal.spill_for(None, limit=MIB) is None
    sent = spill()
    packing.pack({"a": np.zeros(MIB // 8)}, spill=sent)
    (path,) = sent.paths
    os.utime(path, (0, 0))  # as if nobody collected it for decades
    assert hostlocal.sweep() >= 1
    assert not path.exists()
