from __future__ import annotations

from quantum_mesh.node.reservations import MAX_TTL_S, SLOTS_PER_WORKER, ReservationBook


def book(workers: int = 1) -> ReservationBook:
    return ReservationBook(services=("cnot", "bell_pair"), fidelity=0.95, workers=workers)


def reserve(b: ReservationBook, rid: str, *, now: float = 100.0, **kw: object) -> dict[str, object]:
    args: dict[str, object] = {
        "service_type": "cnot",
        "min_fidelity": 0.9,
        "ttl_s": 10.0,
        "in_flight": 0,
        "now": now,
        **kw,
    }
    return b.reserve(reservation_id=rid, **args)  # type: ignore[arg-type]


def test_refusals_name_their_reason() -> None:
    b = book()
    assert reserve(b, "a", service_type="sqd_batch")["reason"] == "service_not_offered"
    assert reserve(b, "b", min_fidelity=0.99)["reason"] == "fidelity_below_minimum"
    assert reserve(b, "c", in_flight=SLOTS_PER_WORKER)["reason"] == "saturated"
    assert b.active_count(now=100.0) == 0


def test_capacity_is_slots_per_worker_counting_in_flight_work() -> None:
    b = book(workers=1)
    ids = [f"r{i}" for i in range(SLOTS_PER_WORKER)]
    for rid in ids:
        assert reserve(b, rid)["accepted"] is True
    assert reserve(b, "c") == {"accepted": False, "reason": "saturated", "expires_at": 100.0}
    assert reserve(b, ids[0])["accepted"] is True  # retry of a granted one: same answer
    assert b.release(reservation_id=ids[0]) == {"released": True}
    assert reserve(b, "c", in_flight=1)["accepted"] is False
    assert reserve(b, "c")["accepted"] is True


def test_expiry_commit_and_consume() -> None:
    b = book(workers=4)
    assert reserve(b, "a", ttl_s=5.0)["expires_at"] == 105.0
    assert reserve(b, "big", ttl_s=10_000.0)["expires_at"] == 100.0 + MAX_TTL_S
    committed = b.commit(reservation_id="a", now=103.0)
    assert committed == {"committed": True, "reason": None, "expires_at": 108.0}
    assert b.active_count(now=107.9) == 2
    assert b.active_count(now=108.0) == 1  # "a" expired
    assert b.commit(reservation_id="a", now=108.0)["reason"] == "unknown_reservation"
    assert b.consume(reservation_id="big") is True
    assert b.consume(reservation_id="big") is False
    assert b.active_count(now=108.0) == 0
