"""Fast diagonal QAOA engine against qiskit-aer statevector simulation."""

from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit.library import XXPlusYYGate, qaoa_ansatz
from qiskit.quantum_info import SparsePauliOp, Statevector
from qiskit_aer import AerSimulator

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.qaoa import engine


def _diagonal_operator(energies: np.ndarray) -> SparsePauliOp:
    """Walsh transform of a diagonal: E(x) = sum_S c_S prod_{q in S} z_q, z = (-1)^x."""
    n = int(energies.size).bit_length() - 1
    index = np.arange(energies.size)
    labels, coeffs = [], []
    for subset in range(energies.size):
        parity = np.array([bin(i & subset).count("1") & 1 for i in index])
        coeff = float(np.mean(energies * (1 - 2 * parity)))
        if abs(coeff) > 1e-14:
            labels.append("".join("Z" if (subset >> q) & 1 else "I" for q in reversed(range(n))))
            coeffs.append(coeff)
    return SparsePauliOp(labels, coeffs)


def _aer_state(circuit: QuantumCircuit) -> np.ndarray:
    sim = AerSimulator(method="statevector", precision="double")
    circ = transpile(circuit, sim, optimization_level=0)
    circ.save_statevector()
    return np.asarray(sim.run(circ).result().get_statevector(), dtype=np.complex128)


def _random_energies(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, n))
    q = (q + q.T) / 2
    bits = (np.arange(1 << n)[:, None] >> np.arange(n)) & 1
    return np.einsum("ij,jk,ik->i", bits, q, bits) + rng.normal(size=1 << n) * 0.1


@pytest.mark.parametrize(("n", "p"), [(8, 1), (8, 2), (10, 2)])
def test_matches_aer_qaoa_ansatz(n: int, p: int) -> None:
    energies = _random_energies(n, seed=n + p)
    gammas = [0.37, -0.81][:p]
    betas = [0.52, 0.23][:p]
    ansatz = qaoa_ansatz(_diagonal_operator(energies), reps=p)
    params = dict(zip(ansatz.parameters, [*betas, *gammas], strict=True))  # beta[..], gamma[..]
    reference = _aer_state(ansatz.assign_parameters(params))
    ref_probs = np.abs(reference) ** 2

    cost = engine.DiagonalCost.from_energies(energies)
    state = engine.evolve(cost, gammas=gammas, betas=betas)
    probs = engine.probabilities(state)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-9, rtol=0)
    assert abs(engine.expectation(cost, state) - float(ref_probs @ energies)) < 1e-9
    # the same state up to the global phase of the identity term
    overlap = abs(np.vdot(reference, state))
    assert abs(overlap - 1.0) < 1e-9


def test_integer_levels_match_direct_phases() -> None:
    rng = np.random.default_rng(3)
    energies = rng.integers(-40, 40, size=1 << 9).astype(float)
    cost = engine.DiagonalCost.from_energies(energies)
    assert cost.level_index is not None
    np.testing.assert_allclose(cost.phases(0.731), np.exp(-1j * 0.731 * energies), atol=1e-13)


@pytest.mark.parametrize("n", [9, 13])
def test_kept_phase_tables_and_mixer_matrices_change_no_energy(n: int) -> None:
    """An angle grid on one cost (tables and RX matrices reused) gives bit for bit the
    energies of fresh costs (nothing reused), for the numpy path (9) and the kernel (13)."""
    energies = np.random.default_rng(n).random(1 << n) * 7.3 - 2.0  # no level table
    grid = [(g, b) for g in (0.2, 0.9, 2.4) for b in (0.1, 0.7)] * 2
    kept = engine.DiagonalCost.from_energies(energies)
    reused = [engine.qaoa_expectation(kept, gammas=[g], betas=[b]) for g, b in grid]
    engine._rx_power.cache_clear()
    fresh = [
        engine.qaoa_expectation(engine.DiagonalCost.from_energies(energies), gammas=[g], betas=[b])
        for g, b in grid
    ]
    assert reused == fresh
    assert kept.phase_table(0.9) is kept.phase_table(0.9)
    np.testing.assert_array_equal(kept.phases(0.9), np.exp(-1j * 0.9 * energies))
    assert kept.phases(0.9) is not kept.phase_table(0.9)  # callers may change phases()


def test_phase_tables_kept_are_bounded() -> None:
    small = engine.DiagonalCost.from_energies(np.linspace(0.0, 1.0, 1 << 8))
    for i in range(engine.PHASE_TABLES_KEPT + 5):
        np.testing.assert_array_equal(
            small.phase_table(0.1 * i), np.exp(-1j * (0.1 * i) * small.energies)
        )
    assert len(small._tables) <= engine.PHASE_TABLES_KEPT
    big = engine.DiagonalCost.from_energies(np.linspace(0.0, 1.0, 2 * engine.PHASE_TABLE_MAX_SIZE))
    big.phase_table(0.3)
    assert not big._tables


def test_xy_ring_mixer_matches_aer_and_preserves_weight() -> None:
    n, k = 6, 3
    energies = _random_energies(n, seed=5)
    gammas, betas = [0.4, 0.9], [0.3, -0.6]
    initial = engine.dicke_state(n, k)
    circuit = QuantumCircuit(n)
    circuit.initialize(initial, range(n))
    for gamma, beta in zip(gammas, betas, strict=True):
        circuit.unitary(np.diag(np.exp(-1j * gamma * energies)), range(n))
        for a in range(n):
            circuit.append(XXPlusYYGate(2 * beta), [a, (a + 1) % n])
    reference = _aer_state(circuit)

    cost = engine.DiagonalCost.from_energies(energies)
    state = engine.evolve(cost, gammas=gammas, betas=betas, initial_state=initial, mixer="xy_ring")
    np.testing.assert_allclose(engine.probabilities(state), np.abs(reference) ** 2, atol=1e-9)
    weights = engine.popcounts(n)
    assert engine.probabilities(state)[weights != k].sum() < 1e-12


def test_samples_match_qiskit_sampling_for_same_seed() -> None:
    n = 8
    energies = _random_energies(n, seed=11)
    cost = engine.DiagonalCost.from_energies(energies)
    state = engine.evolve(cost, gammas=[0.5], betas=[0.4])
    probs = engine.probabilities(state)
    ours = engine.sample_indices(probs, shots=500, seed=1234)
    again = engine.sample_indices(probs, shots=500, seed=1234)
    np.testing.assert_array_equal(ours, again)

    qiskit_state = Statevector(state)
    qiskit_state.seed(1234)
    labels = qiskit_state.sample_memory(500)
    np.testing.assert_array_equal(ours, [int(label, 2) for label in labels])
    counts = engine.sample_counts(probs, shots=500, seed=1234)
    assert sum(counts.values()) == 500


def test_best_distinct_and_bits() -> None:
    energies = np.array([3.0, -1.0, 2.0, -1.0])
    best = engine.best_distinct(np.array([0, 3, 1, 3, 2]), energies, k=3)
    assert best.tolist() == [1, 3, 2]
    assert engine.index_to_bits(6, 4) == [0, 1, 1, 0]
    assert engine.bits_to_index([0, 1, 1, 0]) == 6
    probs = np.array([0.1, 0.4, 0.4, 0.1])
    assert engine.most_probable(probs, k=2).tolist() == [1, 2]


def test_rejects_bad_input() -> None:
    with pytest.raises(InvalidInput):
        engine.DiagonalCost.from_energies([1.0, 2.0, 3.0])
    cost = engine.DiagonalCost.from_energies([0.0, 1.0])
    with pytest.raises(InvalidInput):
        engine.evolve(cost, gammas=[0.1], betas=[])


def _qubo_operator(q: np.ndarray) -> SparsePauliOp:
    """``x^T Q x`` with ``x_i = (1 - Z_i) / 2`` as Z and ZZ terms (few terms, any n)."""
    n = q.shape[0]
    sym = (q + q.T) / 2
    terms: dict[str, float] = {}

    def add(qubits: tuple[int, ...], coeff: float) -> None:
        label = "".join("Z" if k in qubits else "I" for k in reversed(range(n)))
        terms[label] = terms.get(label, 0.0) + coeff

    for i in range(n):
        add((), sym[i, i] / 2)
        add((i,), -sym[i, i] / 2)
        for j in range(i + 1, n):
            c = sym[i, j] / 2
            add((), c)
            add((i,), -c)
            add((j,), -c)
            add((i, j), c)
    return SparsePauliOp(list(terms), list(terms.values())).simplify(atol=0)


@pytest.mark.parametrize(("n", "p", "integer"), [(13, 1, True), (13, 2, False), (15, 2, True)])
def test_the_fused_kernel_matches_aer(n: int, p: int, integer: bool) -> None:
    """From 12 qubits the layers run in the fused two-pass kernel (``kernel.py``)."""
    from quantum_mesh.quantum.qaoa import kernel
    from quantum_mesh.quantum.qaoa.problems import qubo_energies

    assert kernel.AVAILABLE and n >= engine.FUSED_MIN_QUBITS
    rng = np.random.default_rng(n + p)
    q = rng.integers(-4, 5, size=(n, n)).astype(float) if integer else rng.normal(size=(n, n))
    gammas, betas = [0.37, -0.81][:p], [0.52, 0.23][:p]
    ansatz = qaoa_ansatz(_qubo_operator(q), reps=p)
    params = dict(zip(ansatz.parameters, [*betas, *gammas], strict=True))
    reference = _aer_state(ansatz.assign_parameters(params))
    energies = qubo_energies(q, offset=0.0)
    cost = engine.DiagonalCost.from_energies(energies)
    assert (cost.level_index is not None) is integer  # both phase paths of the kernel
    state = engine.evolve(cost, gammas=gammas, betas=betas)
    np.testing.assert_allclose(engine.probabilities(state), np.abs(reference) ** 2, atol=1e-9)
    assert abs(abs(np.vdot(reference, state)) - 1.0) < 1e-9
    fused_energy = engine.qaoa_expectation(cost, gammas=gammas, betas=betas)
    assert abs(fused_energy - float(np.abs(reference) ** 2 @ energies)) < 1e-9


def _aer_qaoa(q: np.ndarray, gammas: list[float], betas: list[float]) -> np.ndarray:
    """Aer's state for ``qaoa_ansatz`` of ``x^T Q x``."""
    ansatz = qaoa_ansatz(_qubo_operator(q), reps=len(gammas))
    params = dict(zip(ansatz.parameters, [*betas, *gammas], strict=True))
    return _aer_state(ansatz.assign_parameters(params))


@pytest.mark.parametrize(
    ("n", "betas"),
    [
        (12, [0.52, -1.3, 2.9]),  # one tile, no column walk; tan(beta) of either sign and > 1
        (17, [np.pi / 2, 0.23]),  # cos(beta) = 0: the half-angle rounds
        (18, [-np.pi / 2 + 1e-2, 1.9]),  # tan(beta) = -100, above the half-angle threshold
    ],
)
def test_the_fused_kernel_matches_aer_at_any_angle(n: int, betas: list[float]) -> None:
    """``RX(2 beta)`` runs as ``cos(beta) (1 - i tan(beta) X)``: every regime of ``tan``."""
    from quantum_mesh.quantum.qaoa import kernel
    from quantum_mesh.quantum.qaoa.problems import qubo_energies

    rng = np.random.default_rng(n)
    q = rng.integers(-4, 5, size=(n, n)).astype(float)
    gammas = [0.37, -0.81, 0.2][: len(betas)]
    assert kernel.mixer_factors(betas[0], n)[2] == (2 if n == 17 else 1)
    reference = _aer_qaoa(q, gammas, betas)
    cost = engine.DiagonalCost.from_energies(qubo_energies(q, offset=0.0))
    state = engine.evolve(cost, gammas=gammas, betas=betas)
    np.testing.assert_allclose(engine.probabilities(state), np.abs(reference) ** 2, atol=1e-9)
    assert abs(abs(np.vdot(reference, state)) - 1.0) < 1e-9
    exact = float(np.abs(reference) ** 2 @ cost.energies)
    assert abs(engine.qaoa_expectation(cost, gammas=gammas, betas=betas) - exact) < 1e-9


@pytest.mark.parametrize("n", [13, 16, 18, 19, 20, 21])
def test_the_fused_kernel_matches_the_numpy_path(n: int) -> None:
    """Tiles of 13 to 16 qubits, column walks of 0 and 4 to 7 qubits (whole and partial
    groups of 3; the numpy path is checked against Aer above): energies and states, from |+>
    and from another state."""
    from quantum_mesh.quantum.qaoa import kernel
    from quantum_mesh.quantum.qaoa.problems import qubo_energies

    rng = np.random.default_rng(n)
    q = rng.normal(size=(n, n))
    for cost in (
        engine.DiagonalCost.from_energies(qubo_energies(np.round(4 * q), offset=1.0)),
        engine.DiagonalCost.from_energies(qubo_energies(q, offset=0.0)),
    ):
        gammas, betas = [0.11, -0.07], [0.4, -0.9]
        initial = rng.normal(size=1 << n) + 1j * rng.normal(size=1 << n)
        initial /= np.linalg.norm(initial)
        fused = {
            "energy": engine.qaoa_expectation(cost, gammas=gammas, betas=betas),
            "plus": engine.evolve(cost, gammas=gammas, betas=betas),
            "initial": engine.evolve(cost, gammas=gammas, betas=betas, initial_state=initial),
        }
        kernel.AVAILABLE = False
        try:
            plus = engine.evolve(cost, gammas=gammas, betas=betas)
            other = engine.evolve(cost, gammas=gammas, betas=betas, initial_state=initial)
        finally:
            kernel.AVAILABLE = True
        assert abs(fused["energy"] - engine.expectation(cost, plus)) < 1e-9
        np.testing.assert_allclose(fused["plus"], plus, atol=1e-12, rtol=0)
        np.testing.assert_allclose(fused["initial"], other, atol=1e-12, rtol=0)


@pytest.mark.parametrize("tile", [14, 15, 16])
def test_every_tile_size_with_a_column_walk_matches_the_numpy_path(
    tile: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's strides are literals per tile size (14, 15, 16 qubits; the column walk's
    state and energy rows among them); by default n = 20 takes tiles of 14 and only
    n >= 22 the others, so the tile size is forced here: energies (summed in the walk, also
    over two half-angle rounds) and states equal the numpy path's."""
    from quantum_mesh.quantum.qaoa import kernel
    from quantum_mesh.quantum.qaoa.problems import qubo_energies

    n = 20
    monkeypatch.setattr(kernel, "tile_qubits", lambda num_qubits: tile)
    rng = np.random.default_rng(tile)
    q = rng.normal(size=(n, n))
    for cost in (
        engine.DiagonalCost.from_energies(qubo_energies(np.round(4 * q), offset=1.0)),
        engine.DiagonalCost.from_energies(qubo_energies(q, offset=0.0)),
    ):
        for betas in ([0.4, -0.9], [np.pi / 2, 0.3]):  # the second: half-angle rounds
            gammas = [0.11, -0.07]
            energy = engine.qaoa_expectation(cost, gammas=gammas, betas=betas)
            state = engine.evolve(cost, gammas=gammas, betas=betas)
            monkeypatch.setattr(kernel, "AVAILABLE", False)
            reference = engine.evolve(cost, gammas=gammas, betas=betas)
            monkeypatch.setattr(kernel, "AVAILABLE", True)
            assert abs(energy - engine.expectation(cost, reference)) < 1e-9
            np.testing.assert_allclose(state, reference, atol=1e-12, rtol=0)


@pytest.mark.parametrize("tile", [14, 15, 16])
@pytest.mark.parametrize("high", [6, 7, 9])
@pytest.mark.parametrize("sums", [True, False])
def test_one_column_of_the_high_walk_matches_numpy(
    tile: int, high: int, sums: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The column walk's strides (state, buffer and energy rows) are literals per tile size
    and level: each combination, on one column of a state of 2^(tile + high) amplitudes
    (untouched pages stay unallocated, so the large ones cost nothing), against the same
    mixer applied by numpy: ``(1 - i t X)`` on each high qubit, then the energy summed or
    the column stored."""
    from quantum_mesh.quantum.qaoa import kernel

    t, width = 0.37, kernel.COLUMN_WIDTH
    rows = 1 << high
    rng = np.random.default_rng(tile * 100 + high)
    column = rng.normal(size=(rows, width)) + 1j * rng.normal(size=(rows, width))
    column_energies = rng.normal(size=(rows, width))
    size = 1 << (tile + high)
    re, im, energies = np.zeros(size), np.zeros(size), np.zeros(size)
    at = (np.arange(rows)[:, None] << tile) + np.arange(width)[None, :]
    re[at], im[at], energies[at] = column.real, column.imag, column_energies
    monkeypatch.setattr(kernel, "tile_qubits", lambda num_qubits: tile)
    buffer_size = kernel.column_buffer_size(tile + high)
    br, bi = np.empty(buffer_size), np.empty(buffer_size)

    total = kernel._high_pass(re, im, energies, t, high, 1, br, bi, sums, tile, 0, width)

    expected = column.reshape((2,) * high + (width,))
    mixer = np.array([[1, -1j * t], [-1j * t, 1]])
    for axis in range(high):  # row bit b is axis high - 1 - b; every qubit gets the same
        expected = np.moveaxis(np.tensordot(mixer, expected, axes=([1], [axis])), 0, axis)
    expected = expected.reshape(rows, width)
    if sums:
        assert total == pytest.approx(float(np.sum(np.abs(expected) ** 2 * column_energies)))
        np.testing.assert_array_equal(re[at], column.real)  # an energy stores nothing
    else:
        np.testing.assert_allclose(re[at] + 1j * im[at], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("n", "threads"), [(18, 2), (21, 3)])
def test_an_evaluation_split_across_threads_matches_one_thread(n: int, threads: int) -> None:
    """Tiles and columns split across threads (3: runs of unequal length), each with scratch
    of its own: the same states and energies as one thread, from |+> and from another state."""
    import threading

    from quantum_mesh.quantum.qaoa import kernel
    from quantum_mesh.quantum.qaoa.problems import qubo_energies

    rng = np.random.default_rng(n)
    cost = engine.DiagonalCost.from_energies(qubo_energies(rng.normal(size=(n, n)), offset=0.5))
    gammas, betas = [0.21, -0.4], [0.6, 1.1]
    initial = rng.normal(size=1 << n) + 1j * rng.normal(size=1 << n)
    initial /= np.linalg.norm(initial)

    def run() -> tuple[float, np.ndarray, np.ndarray]:
        return (
            engine.qaoa_expectation(cost, gammas=gammas, betas=betas),
            engine.evolve(cost, gammas=gammas, betas=betas),
            engine.evolve(cost, gammas=gammas, betas=betas, initial_state=initial),
        )

    alone = run()
    kernel.set_threads(threads)
    try:
        split = run()
    finally:
        kernel.set_threads(1)
    assert any(t.name.startswith("qaoa-kernel") for t in threading.enumerate())
    assert abs(split[0] - alone[0]) < 1e-12
    np.testing.assert_allclose(split[1], alone[1], atol=1e-14, rtol=0)
    np.testing.assert_allclose(split[2], alone[2], atol=1e-14, rtol=0)


def test_a_node_worker_splits_its_evaluations_across_its_threads() -> None:
    """``qaoa_schedules`` takes the node's thread count: the same energies either way."""
    from quantum_mesh.quantum.qaoa import kernel, worker

    n = 18
    rng = np.random.default_rng(7)
    params = {
        "qubo": {"matrix": rng.normal(size=(n, n)).tolist(), "offset": 0.0},
        "schedules": [[0.3, 0.5], [0.1, -0.2], [0.7, 0.9]],
    }
    one = worker.evaluate_schedules(params, peer_id="p", threads=1)
    two = worker.evaluate_schedules(params, peer_id="p", threads=2)
    assert kernel._threads == 2
    kernel.set_threads(1)
    np.testing.assert_allclose(two["energies"], one["energies"], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="at least 1"):
        kernel.set_threads(0)


def test_phases_computed_in_the_walk_equal_numpy_exp() -> None:
    """The kernel's own ``exp(-i gamma E)`` (a chunk at a time, no table): within 1e-15 of
    numpy's up to the largest argument it is used for."""
    from quantum_mesh.quantum.qaoa import kernel

    rng = np.random.default_rng(5)
    for scale in (1.0, 1e3, kernel.COMPUTED_PHASE_MAX_ARG / 4):
        energies = rng.uniform(-scale, scale, size=kernel.CHUNK)
        ph = np.empty(2 * kernel.CHUNK)
        kernel._phase_chunk(energies, -0.7, ph)
        expected = np.exp(-1j * -0.7 * energies)
        np.testing.assert_allclose(ph[: kernel.CHUNK], expected.real, atol=1e-15, rtol=0)
        np.testing.assert_allclose(ph[kernel.CHUNK :], expected.imag, atol=1e-15, rtol=0)


def test_phases_past_the_reduction_range_come_from_tables() -> None:
    """Energies so large that ``|gamma E|`` is past ``COMPUTED_PHASE_MAX_ARG``: the fused
    kernel takes numpy's phase tables instead, and agrees with the numpy path."""
    from quantum_mesh.quantum.qaoa import kernel
    from quantum_mesh.quantum.qaoa.problems import qubo_energies

    n = 14
    rng = np.random.default_rng(3)
    energies = qubo_energies(rng.normal(size=(n, n)) * 1e6, offset=0.0)
    cost = engine.DiagonalCost.from_energies(energies)
    assert cost.level_index is None and cost.energy_bound > kernel.COMPUTED_PHASE_MAX_ARG
    gammas, betas = [0.9], [0.3]
    with pytest.raises(ValueError, match="COMPUTED_PHASE_MAX_ARG"):
        kernel.evolve_x(
            *kernel.plus_parts(n),
            phase_tables=None,
            level_index=None,
            energies=cost.energies,
            betas=betas,
            gammas=gammas,
            num_qubits=n,
            want_energy=True,
        )
    fused = engine.evolve(cost, gammas=gammas, betas=betas)
    kernel.AVAILABLE = False
    try:
        reference = engine.evolve(cost, gammas=gammas, betas=betas)
    finally:
        kernel.AVAILABLE = True
    np.testing.assert_allclose(fused, reference, atol=1e-12, rtol=0)


@pytest.mark.parametrize("noise_level", [0.0, 0.01])
def test_a_schedules_energy_without_the_state_equals_the_probabilities(
    noise_level: float,
) -> None:
    """``noisy_energy`` sums the energy in the kernel's walk (no state, no probabilities)
    and mixes in the noise afterwards: the same as the probabilities' energy."""
    from quantum_mesh.quantum.qaoa.solver import noisy_energy, noisy_probabilities, qubo_problem

    n = 15
    problem = qubo_problem(np.random.default_rng(9).normal(size=(n, n)), offset=2.5)
    for gammas, betas in (([0.4], [0.7]), ([0.2, -0.5], [1.1, 0.3])):
        probs = noisy_probabilities(problem, gammas, betas, noise_level)
        expected = float(probs @ problem.energies)
        assert abs(noisy_energy(problem, gammas, betas, noise_level) - expected) < 1e-9
