"""The QAOA layer with the transverse-field mixer in two passes over the state (numba).

One layer is ``psi *= exp(-i gamma E)`` followed by ``RX(2 beta)`` on every qubit. Done
naively that is one pass over the 2^n amplitudes for the phase and one per qubit (or per few
qubits) for the mixer: from n = 20 the state is 16 MiB or more, past the L2 cache, so every
pass is paid in memory traffic. Here the state is walked twice per layer:

1. **Low qubits, in tiles.** Each tile of ``2^tq`` consecutive amplitudes (``tq`` = 12..16,
   see ``tile_qubits``) gets its cost phase and the mixer on qubits ``0 .. tq-1`` in a scratch
   copy that stays in L1/L2, and is stored back by its last butterfly group.
2. **High qubits, in columns.** The mixer on qubits ``tq .. n-1`` (a multiple of 3 of them)
   pairs amplitudes ``2^tq`` or more apart. For ``COLUMN_WIDTH`` consecutive low indices, all
   ``2^(n-tq)`` high indices are gathered into a cache-sized buffer (the first three qubits
   applied on the way in), mixed, and stored back; for an energy the last layer's last group
   sums ``|psi|^2 E`` instead and nothing is stored (an energy alone needs no final state).

What makes the arithmetic keep up with memory:

* **Scaled butterflies.** ``RX(2 beta) = cos(beta) (1 - i tan(beta) X)``: the mixer is
  applied as ``1 - i t X`` per qubit (one fused multiply-add per real output, half the
  work of the plain 2x2 product) and the product of the ``cos`` factors, ``cos(beta)^n``, is
  folded into the cost phase. Where ``|cos(beta)| < HALF_ANGLE_BELOW`` ``tan`` blows up, so
  there the layer applies ``RX(beta)`` twice instead (``|cos(beta/2)| ~ 0.7``).
* **Qubits three at a time in registers.** Each butterfly group loads 8 amplitudes (a
  stride apart), applies three qubits and stores them: a load and a store per amplitude per
  three qubits. The loops run over unit-stride lanes with strides that are compile-time
  constants (each call site of an ``inline="always"`` helper passes literals), which is what
  lets LLVM vectorise them without run-time alias checks, also for the 8-lane groups of
  qubits 3-5 (with run-time strides those stayed scalar), and for the energy rows of the
  column walk's last group. Slices into the state and the scratch are bounded, so that
  LLVM can tell them apart without run-time checks (open-ended, a copy loop stayed scalar).
* **Qubits 0-2 in one register.** Their pairs (1, 2, 4 apart) lie inside one 8-lane
  vector: an intrinsic (``_lanes3``) loads the 8 real and the 8 imaginary parts as two
  vectors and pairs lanes with shuffles, three fused multiply-adds each way, as each chunk
  of the tile is read (0.09 ns per amplitude and qubit, against 0.5 for strided gathers).
  From ``|+>`` with gathered phases the old form stays: there the phases come from gathers
  anyway, and vectorised across blocks of 8 they already sit one pair member per register.
* **Phases computed, not read.** With integer energies the phase is gathered from a small
  table of levels. With real-valued ones (2^n distinct energies) ``exp(-i gamma E)`` is
  computed chunk by chunk as the tile is read (``_phase_chunk``: a vectorised sincos), where
  a table of 2^n phases built by numpy first cost 2-4x the walk itself at n = 20.
* **Padded scratch.** Rows of a group a power-of-two multiple of 4 KiB apart fall into one
  L1 set and evict each other (measured: 3-7x slower); the scratch tile and the column
  buffer pad their rows so that no group's rows are.
* **Streams, not scattered lines.** The tile's last group is the one whose rows are 512
  bytes apart, so its stores into the state stream; the column buffer takes 512 consecutive
  amplitudes per row (4 KiB runs the prefetchers follow; 64 were 2x slower at n = 22).
  From ``|+>`` the tile is never read, so its lines are prefetched for writing as the tile
  starts (``prefetchw``), not fetched one by one by the stores.

The state is held as two contiguous float64 arrays (real and imaginary parts). Results agree
with the numpy path of ``engine.py`` and with Qiskit Aer to rounding (tests assert 1e-9).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

try:  # numba is a dependency; the engine falls back to numpy if it cannot load
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only where numba is missing
    njit = None  # type: ignore[assignment]

#: Qubits mixed per tile in the first walk: at least ``MIN_TILE_QUBITS`` (the fused path
#: starts there), at most ``MAX_TILE_QUBITS`` (a 1 MiB scratch tile, L2-sized); see
#: ``tile_qubits``.
MIN_TILE_QUBITS = 12
MAX_TILE_QUBITS = 16
#: Smallest tile once the state needs a column walk (see ``tile_qubits``).
TILE_QUBITS_FROM = 14
#: The tile is walked in chunks of 2^9 amplitudes.
CHUNK = 512
#: Scratch padding: amplitude ``i`` of a tile sits at ``i + PAD * (i//2^9 + i//2^15)``, and
#: column-buffer row ``h`` starts at ``h * (width + PAD) + PAD * (h//8 + h//512)``: rows of a
#: butterfly group a power-of-two multiple of 4 KiB apart fall into one L1 set and evict each
#: other (measured: 3-7x slower); padded, no group's rows are.
PAD = 8
#: Offset of the imaginary parts in the scratch tile (6 cache lines off the real parts' sets).
TILE_IM = (1 << MAX_TILE_QUBITS) + PAD * ((1 << (MAX_TILE_QUBITS - 9)) + 2) + 32
SCRATCH = 2 * TILE_IM
#: Consecutive low indices gathered per column walk (with 2^m high ones each): runs of 4 KiB,
#: which the prefetchers follow (n = 22: 64-wide columns took 2x as long; n = 24, m = 9: 512
#: wide 110 ms against 136 ms at 128, though the buffer is then 4 MiB, twice L2).
COLUMN_WIDTH = 512
#: Below this |cos(beta)| the layer mixes with two half angles: ``tan(beta)^n`` and
#: ``cos(beta)^n`` stay far inside the float64 range (1e3^26 = 1e78).
HALF_ANGLE_BELOW = 1e-3

#: Where a tile's cost phase comes from (``_phased``): the level table through the level
#: index, a table of ``2^n`` phases, or computed chunk by chunk from the energies.
GATHER, TABLE, COMPUTED = 0, 1, 2
#: ``gamma * E`` up to this size is reduced to ``[-pi/4, pi/4]`` exactly (``_phase_chunk``:
#: the first part of pi/2 has 33 bits, so ``n * PIO2_1`` is exact for ``n < 2^20``); beyond,
#: the phases come from numpy's ``exp`` as a table.
COMPUTED_PHASE_MAX_ARG = 1.0e6

AVAILABLE = njit is not None


def _bf(xr: float, xi: float, yr: float, yi: float, t: float) -> tuple[float, float, float, float]:
    """``(1 - i t X)`` on the pair ``(x, y)``."""
    return xr + t * yi, xi - t * yr, yr + t * xi, yi - t * xr


def _quad(
    r0: float,
    r1: float,
    r2: float,
    r3: float,
    i0: float,
    i1: float,
    i2: float,
    i3: float,
    t: float,
) -> tuple[float, float, float, float, float, float, float, float]:
    r0, i0, r1, i1 = _bf(r0, i0, r1, i1, t)
    r2, i2, r3, i3 = _bf(r2, i2, r3, i3, t)
    r0, i0, r2, i2 = _bf(r0, i0, r2, i2, t)
    r1, i1, r3, i3 = _bf(r1, i1, r3, i3, t)
    return r0, r1, r2, r3, i0, i1, i2, i3


def _oct(
    r0: float,
    r1: float,
    r2: float,
    r3: float,
    r4: float,
    r5: float,
    r6: float,
    r7: float,
    i0: float,
    i1: float,
    i2: float,
    i3: float,
    i4: float,
    i5: float,
    i6: float,
    i7: float,
    t: float,
) -> tuple[float, ...]:
    r0, r1, r2, r3, i0, i1, i2, i3 = _quad(r0, r1, r2, r3, i0, i1, i2, i3, t)
    r4, r5, r6, r7, i4, i5, i6, i7 = _quad(r4, r5, r6, r7, i4, i5, i6, i7, t)
    r0, i0, r4, i4 = _bf(r0, i0, r4, i4, t)
    r1, i1, r5, i5 = _bf(r1, i1, r5, i5, t)
    r2, i2, r6, i6 = _bf(r2, i2, r6, i6, t)
    r3, i3, r7, i7 = _bf(r3, i3, r7, i7, t)
    return r0, r1, r2, r3, r4, r5, r6, r7, i0, i1, i2, i3, i4, i5, i6, i7


def _rows(y: Any, off: int, s: int, width: int, count: int, t: float) -> None:
    """``count`` (1-3) qubits on rows ``k + j s`` (``k < width``) of ``y``, imaginary parts
    ``off`` further on. ``off``, ``s`` and ``width`` are literals at every call site."""
    if count == 3:
        for k in range(width):
            r0, r1, r2, r3, r4, r5, r6, r7, i0, i1, i2, i3, i4, i5, i6, i7 = _oct(
                y[k], y[k + s], y[k + 2 * s], y[k + 3 * s],
                y[k + 4 * s], y[k + 5 * s], y[k + 6 * s], y[k + 7 * s],
                y[off + k], y[off + k + s], y[off + k + 2 * s], y[off + k + 3 * s],
                y[off + k + 4 * s], y[off + k + 5 * s], y[off + k + 6 * s], y[off + k + 7 * s],
                t,
            )  # fmt: skip
            y[k], y[k + s], y[k + 2 * s], y[k + 3 * s] = r0, r1, r2, r3
            y[k + 4 * s], y[k + 5 * s], y[k + 6 * s], y[k + 7 * s] = r4, r5, r6, r7
            y[off + k], y[off + k + s], y[off + k + 2 * s], y[off + k + 3 * s] = i0, i1, i2, i3
            y[off + k + 4 * s], y[off + k + 5 * s] = i4, i5
            y[off + k + 6 * s], y[off + k + 7 * s] = i6, i7
    elif count == 2:
        for k in range(width):
            r0, r1, r2, r3, i0, i1, i2, i3 = _quad(
                y[k], y[k + s], y[k + 2 * s], y[k + 3 * s],
                y[off + k], y[off + k + s], y[off + k + 2 * s], y[off + k + 3 * s],
                t,
            )  # fmt: skip
            y[k], y[k + s], y[k + 2 * s], y[k + 3 * s] = r0, r1, r2, r3
            y[off + k], y[off + k + s], y[off + k + 2 * s], y[off + k + 3 * s] = i0, i1, i2, i3
    else:
        for k in range(width):
            r0, i0, r1, i1 = _bf(y[k], y[off + k], y[k + s], y[off + k + s], t)
            y[k], y[off + k], y[k + s], y[off + k + s] = r0, i0, r1, i1


def _rows_out(y: Any, off: int, s: int, dr: Any, di: Any, ds: int, width: int, t: float) -> None:
    """:func:`_rows`, storing row ``j`` at ``dr[k + j ds]``, ``di[k + j ds]`` instead."""
    for k in range(width):
        r0, r1, r2, r3, r4, r5, r6, r7, i0, i1, i2, i3, i4, i5, i6, i7 = _oct(
            y[k], y[k + s], y[k + 2 * s], y[k + 3 * s],
            y[k + 4 * s], y[k + 5 * s], y[k + 6 * s], y[k + 7 * s],
            y[off + k], y[off + k + s], y[off + k + 2 * s], y[off + k + 3 * s],
            y[off + k + 4 * s], y[off + k + 5 * s], y[off + k + 6 * s], y[off + k + 7 * s],
            t,
        )  # fmt: skip
        dr[k], dr[k + ds], dr[k + 2 * ds], dr[k + 3 * ds] = r0, r1, r2, r3
        dr[k + 4 * ds], dr[k + 5 * ds], dr[k + 6 * ds], dr[k + 7 * ds] = r4, r5, r6, r7
        di[k], di[k + ds], di[k + 2 * ds], di[k + 3 * ds] = i0, i1, i2, i3
        di[k + 4 * ds], di[k + 5 * ds], di[k + 6 * ds], di[k + 7 * ds] = i4, i5, i6, i7


def _cols(yr: Any, yi: Any, s: int, w: int, count: int, t: float) -> None:
    """``count`` (1-3) qubits on rows ``k + j s`` of the column buffer (``k < w``)."""
    if count == 3:
        for k in range(w):
            r0, r1, r2, r3, r4, r5, r6, r7, i0, i1, i2, i3, i4, i5, i6, i7 = _oct(
                yr[k], yr[k + s], yr[k + 2 * s], yr[k + 3 * s],
                yr[k + 4 * s], yr[k + 5 * s], yr[k + 6 * s], yr[k + 7 * s],
                yi[k], yi[k + s], yi[k + 2 * s], yi[k + 3 * s],
                yi[k + 4 * s], yi[k + 5 * s], yi[k + 6 * s], yi[k + 7 * s],
                t,
            )  # fmt: skip
            yr[k], yr[k + s], yr[k + 2 * s], yr[k + 3 * s] = r0, r1, r2, r3
            yr[k + 4 * s], yr[k + 5 * s], yr[k + 6 * s], yr[k + 7 * s] = r4, r5, r6, r7
            yi[k], yi[k + s], yi[k + 2 * s], yi[k + 3 * s] = i0, i1, i2, i3
            yi[k + 4 * s], yi[k + 5 * s], yi[k + 6 * s], yi[k + 7 * s] = i4, i5, i6, i7
    elif count == 2:
        for k in range(w):
            r0, r1, r2, r3, i0, i1, i2, i3 = _quad(
                yr[k], yr[k + s], yr[k + 2 * s], yr[k + 3 * s],
                yi[k], yi[k + s], yi[k + 2 * s], yi[k + 3 * s],
                t,
            )  # fmt: skip
            yr[k], yr[k + s], yr[k + 2 * s], yr[k + 3 * s] = r0, r1, r2, r3
            yi[k], yi[k + s], yi[k + 2 * s], yi[k + 3 * s] = i0, i1, i2, i3
    else:
        for k in range(w):
            r0, i0, r1, i1 = _bf(yr[k], yi[k], yr[k + s], yi[k + s], t)
            yr[k], yi[k], yr[k + s], yi[k + s] = r0, i0, r1, i1


def _cols_in(sr: Any, si: Any, ss: int, yr: Any, yi: Any, w: int, t: float) -> None:
    """Three qubits on rows ``ss`` apart in ``sr``/``si``, stored a row pitch apart in
    ``yr``/``yi``."""
    s = w + PAD
    for k in range(w):
        r0, r1, r2, r3, r4, r5, r6, r7, i0, i1, i2, i3, i4, i5, i6, i7 = _oct(
            sr[k], sr[k + ss], sr[k + 2 * ss], sr[k + 3 * ss],
            sr[k + 4 * ss], sr[k + 5 * ss], sr[k + 6 * ss], sr[k + 7 * ss],
            si[k], si[k + ss], si[k + 2 * ss], si[k + 3 * ss],
            si[k + 4 * ss], si[k + 5 * ss], si[k + 6 * ss], si[k + 7 * ss],
            t,
        )  # fmt: skip
        yr[k], yr[k + s], yr[k + 2 * s], yr[k + 3 * s] = r0, r1, r2, r3
        yr[k + 4 * s], yr[k + 5 * s], yr[k + 6 * s], yr[k + 7 * s] = r4, r5, r6, r7
        yi[k], yi[k + s], yi[k + 2 * s], yi[k + 3 * s] = i0, i1, i2, i3
        yi[k + 4 * s], yi[k + 5 * s], yi[k + 6 * s], yi[k + 7 * s] = i4, i5, i6, i7


def _cols_energy(yr: Any, yi: Any, s: int, en: Any, es: int, w: int, t: float) -> float:
    """:func:`_cols` on three qubits, returning the energy of the result instead of storing
    it (row ``j``'s energies at ``en[k + j es]``)."""
    total = 0.0
    for k in range(w):
        r0, r1, r2, r3, r4, r5, r6, r7, i0, i1, i2, i3, i4, i5, i6, i7 = _oct(
            yr[k], yr[k + s], yr[k + 2 * s], yr[k + 3 * s],
            yr[k + 4 * s], yr[k + 5 * s], yr[k + 6 * s], yr[k + 7 * s],
            yi[k], yi[k + s], yi[k + 2 * s], yi[k + 3 * s],
            yi[k + 4 * s], yi[k + 5 * s], yi[k + 6 * s], yi[k + 7 * s],
            t,
        )  # fmt: skip
        total += (
            (r0 * r0 + i0 * i0) * en[k]
            + (r1 * r1 + i1 * i1) * en[k + es]
            + (r2 * r2 + i2 * i2) * en[k + 2 * es]
            + (r3 * r3 + i3 * i3) * en[k + 3 * es]
            + (r4 * r4 + i4 * i4) * en[k + 4 * es]
            + (r5 * r5 + i5 * i5) * en[k + 5 * es]
            + (r6 * r6 + i6 * i6) * en[k + 6 * es]
            + (r7 * r7 + i7 * i7) * en[k + 7 * es]
        )
    return total


# Cody-Waite split of pi/2 and fdlibm's minimax polynomials for sin and cos on [-pi/4, pi/4].
_TWO_OVER_PI = 6.36619772367581382433e-01
_PIO2_1 = 1.57079632673412561417e00
_PIO2_2 = 6.07710050630396597660e-11
_PIO2_3 = 2.02226624871116645580e-21
_S1, _S2, _S3 = -1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04
_S4, _S5, _S6 = 2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10
_C1, _C2, _C3 = 4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05
_C4, _C5, _C6 = -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11


def _phase_chunk(energies: Any, gamma: float, ph: Any) -> None:
    """``exp(-i gamma E)`` of a chunk's energies: real parts to ``ph[:CHUNK]``, imaginary
    parts to ``ph[CHUNK:]``. A loop of arithmetic and selects that LLVM vectorises (~1.3 ns
    per amplitude here, against ~24 ns for numpy's complex ``exp``), within 3e-16 of it for
    ``|gamma E| <= COMPUTED_PHASE_MAX_ARG``. Compiled on its own, without reassociation:
    with it, LLVM may fold the three-part reduction into one product and lose the low bits
    (measured: errors of 3e-11 at ``|gamma E| ~ 4e4``)."""
    for k in range(energies.shape[0]):
        x = gamma * energies[k]
        n = math.floor(x * _TWO_OVER_PI + 0.5)
        r = ((x - n * _PIO2_1) - n * _PIO2_2) - n * _PIO2_3
        z = r * r
        s = r + r * z * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))))
        c = 1.0 - 0.5 * z + z * z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * _C6)))))
        quadrant = np.int64(n) & 3
        sign = 1.0 - 2.0 * ((quadrant >> 1) & 1)
        odd = quadrant & 1
        ph[k] = sign * (-s if odd else c)  # cos(x)
        ph[CHUNK + k] = -sign * (c if odd else s)  # -sin(x)


def _prefetch_w(arr: Any, i: int) -> None:
    """Hint that ``arr[i]``'s cache line will be written (``prefetchw``); replaced by an LLVM
    intrinsic below."""


def _phased(
    sr: Any, si: Any, tab: Any, ix: Any, ph: Any, k: int, g: float, plus: bool, mode: int
) -> tuple[float, float]:
    """Amplitude ``k`` of a chunk times its (scaled) cost phase; ``plus``: of ``|+>``. The
    phase comes from the level table through the index (``GATHER``), from a table per
    amplitude (``TABLE``) or from the chunk's computed phases ``ph`` (``COMPUTED``)."""
    if mode == COMPUTED:
        pr, pi = ph[k] * g, ph[CHUNK + k] * g
    else:
        p = tab[ix[k]] if mode == GATHER else tab[k]
        pr, pi = p.real * g, p.imag * g
    if plus:
        return pr, pi
    a, b = sr[k], si[k]
    return a * pr - b * pi, a * pi + b * pr


def _pos(i: int) -> int:
    """Offset of tile amplitude ``i`` in the scratch tile."""
    return i + PAD * ((i >> 9) + (i >> 15))


def _lanes3(y: Any, ro: int, io: int, t: float) -> None:
    """Qubits 0-2 on the 8 amplitudes ``y[ro:ro+8]`` (real parts), ``y[io:io+8]``
    (imaginary parts), in place. Their pairs are 1, 2 and 4 apart, inside one 8-lane vector:
    vectorised across blocks, LLVM made strided gathers of them (1.6 ns per amplitude here,
    against 0.1 ns per qubit for the other groups). Replaced below by an intrinsic that
    keeps the 8 lanes in one register each and pairs them with lane shuffles: amplitude
    ``k``'s partner for the qubit of stride ``s`` is ``k ^ s``, and ``(1 - i t X)`` gives
    both of a pair the same form, ``r += t i[k ^ s]``, ``i -= t r[k ^ s]``."""
    r = [y[ro + k] for k in range(8)]
    i = [y[io + k] for k in range(8)]
    for s in (1, 2, 4):
        r, i = [r[k] + t * i[k ^ s] for k in range(8)], [i[k] - t * r[k ^ s] for k in range(8)]
    for k in range(8):
        y[ro + k], y[io + k] = r[k], i[k]


def _tile_in(
    re: Any,
    im: Any,
    table: Any,
    index: Any,
    energies: Any,
    gamma: float,
    ph: Any,
    start: int,
    chunks: int,
    x: Any,
    g: float,
    t: float,
    plus: bool,
    mode: int,
) -> None:
    """Tile ``start`` times its phase, with qubits 0-2 mixed, into the scratch ``x``: chunk
    by chunk, the phased amplitudes (a unit-stride loop, the phase gathered or computed),
    then qubits 0-2 on them while the chunk is in L1. ``plus`` and ``mode`` are literals at
    every call site (one loop each)."""
    for c in range(chunks):
        base = start + c * CHUNK
        y = x[_pos(c * CHUNK) :]
        sr, si = re[base : base + CHUNK], im[base : base + CHUNK]
        ix = index[base : base + CHUNK] if mode == GATHER else index
        tab = table[base : base + CHUNK] if mode == TABLE else table
        if mode == COMPUTED:
            _phase_chunk(energies[base : base + CHUNK], gamma, ph)
        if plus and mode == GATHER:
            # Only gathered phases to read: vectorised across blocks of 8, the gathers give
            # each qubit's pairs in separate registers, and qubits 0-2 are plain butterflies
            # (measured 1.3x faster here than the gather loop and the lane shuffles below).
            for q in range(CHUNK // 8):
                a = 8 * q
                r0, i0 = _phased(sr, si, tab, ix, ph, a, g, plus, mode)
                r1, i1 = _phased(sr, si, tab, ix, ph, a + 1, g, plus, mode)
                r2, i2 = _phased(sr, si, tab, ix, ph, a + 2, g, plus, mode)
                r3, i3 = _phased(sr, si, tab, ix, ph, a + 3, g, plus, mode)
                r4, i4 = _phased(sr, si, tab, ix, ph, a + 4, g, plus, mode)
                r5, i5 = _phased(sr, si, tab, ix, ph, a + 5, g, plus, mode)
                r6, i6 = _phased(sr, si, tab, ix, ph, a + 6, g, plus, mode)
                r7, i7 = _phased(sr, si, tab, ix, ph, a + 7, g, plus, mode)
                _prefetch_w(sr, a)  # as below
                _prefetch_w(si, a)
                r0, r1, r2, r3, r4, r5, r6, r7, i0, i1, i2, i3, i4, i5, i6, i7 = _oct(
                    r0, r1, r2, r3, r4, r5, r6, r7, i0, i1, i2, i3, i4, i5, i6, i7, t
                )
                y[a], y[a + 1], y[a + 2], y[a + 3] = r0, r1, r2, r3
                y[a + 4], y[a + 5], y[a + 6], y[a + 7] = r4, r5, r6, r7
                o = TILE_IM + a
                y[o], y[o + 1], y[o + 2], y[o + 3] = i0, i1, i2, i3
                y[o + 4], y[o + 5], y[o + 6], y[o + 7] = i4, i5, i6, i7
            continue
        # Bounded slices on both sides: with ``y`` open-ended LLVM could not rule out that
        # it overlaps the state and left the loop scalar (2.6x slower, measured).
        yr, yi = y[:CHUNK], y[TILE_IM : TILE_IM + CHUNK]
        for k in range(CHUNK):
            yr[k], yi[k] = _phased(sr, si, tab, ix, ph, k, g, plus, mode)
        for a in range(0, CHUNK, 8):
            if plus:
                # From |+> the tile is not read here, so its lines would first be fetched
                # when the last group stores into them (16 streams, latency-bound, measured
                # 1.5x slower at n = 22): ask for them now, spread among the work (all at
                # once before it they were 1.3x slower).
                _prefetch_w(sr, a)
                _prefetch_w(si, a)
            _lanes3(y, a, TILE_IM + a, t)


def _tile_low3(x: Any, chunks: int, t: float) -> None:
    """Qubits 0-2 on the scratch tile (the second half-angle round)."""
    for c in range(chunks):
        o = _pos(c * CHUNK)
        for a in range(0, CHUNK, 8):
            _lanes3(x, o + a, o + TILE_IM + a, t)


def _tile_mix(x: Any, tq: int, t: float, out: bool, re: Any, im: Any, start: int) -> None:
    """Qubits 3 .. tq-1 on the scratch tile, three at a time: first across chunks (9-11,
    12-14, 15: rows 2^9, 2^12, 2^15 amplitudes apart), then chunk by chunk 3-5 and 6-8 while
    the chunk is in L1. ``out``: that last group stores into the state's tile at ``start``
    (its 8 rows are 512 bytes apart there, so the stores stream; rows 4 KiB apart would
    share an L1 set and evict each other's half-written lines)."""
    chunks = 1 << (tq - 9)
    for c in range(0, chunks, 8):
        _rows(x[_pos(c * CHUNK) :], TILE_IM, _pos(1 << 9), CHUNK, 3, t)
    if tq > 12:
        count = min(3, tq - 12)
        for c in range(0, chunks, 8 << count):
            for u in range(8):
                _rows(x[_pos((c + u) * CHUNK) :], TILE_IM, _pos(1 << 12), CHUNK, count, t)
    if tq > 15:
        for u in range(64):
            _rows(x[_pos(u * CHUNK) :], TILE_IM, _pos(1 << 15), CHUNK, 1, t)
    for c in range(chunks):
        o = _pos(c * CHUNK)
        for b in range(8):
            _rows(x[o + 64 * b :], TILE_IM, 8, 8, 3, t)
        if out:
            d = start + c * CHUNK
            _rows_out(x[o:], TILE_IM, 64, re[d : d + CHUNK], im[d : d + CHUNK], 64, 64, t)
        else:
            _rows(x[o:], TILE_IM, 64, 64, 3, t)


def _low_pass(
    re: Any,
    im: Any,
    table: Any,
    index: Any,
    energies: Any,
    gamma: float,
    mode: int,
    plus: bool,
    g: float,
    t: float,
    rounds: int,
    x: Any,
    ph: Any,
    tq: int,
    lo: int,
    hi: int,
) -> None:
    """The first walk over the tiles of amplitudes ``lo .. hi`` (whole tiles)."""
    tile = 1 << tq
    chunks = tile // CHUNK
    for start in range(lo, hi, tile):
        # one call site per (plus, mode): each is compiled as a loop of its own
        if plus:
            if mode == GATHER:
                _tile_in(re, im, table, index, energies, gamma, ph, start, chunks, x, g, t, True, 0)
            elif mode == TABLE:
                _tile_in(re, im, table, index, energies, gamma, ph, start, chunks, x, g, t, True, 1)
            else:
                _tile_in(re, im, table, index, energies, gamma, ph, start, chunks, x, g, t, True, 2)
        elif mode == GATHER:
            _tile_in(re, im, table, index, energies, gamma, ph, start, chunks, x, g, t, False, 0)
        elif mode == TABLE:
            _tile_in(re, im, table, index, energies, gamma, ph, start, chunks, x, g, t, False, 1)
        else:
            _tile_in(re, im, table, index, energies, gamma, ph, start, chunks, x, g, t, False, 2)
        for rnd in range(rounds):
            if rnd:
                _tile_low3(x, chunks, t)
            _tile_mix(x, tq, t, rnd == rounds - 1, re, im, start)


def _row(h: int) -> int:
    """Offset of row ``h`` in the column buffer."""
    return h * (COLUMN_WIDTH + PAD) + PAD * ((h >> 3) + (h >> 9))


def _col_group(
    br: Any,
    bi: Any,
    rows: int,
    level: int,
    count: int,
    t: float,
    sums: bool,
    energies: Any,
    start: int,
    tile: int,
) -> float:
    """``count`` qubits (3 at level 0 or when ``sums``), rows ``8^level`` apart, over every
    block of the column buffer. ``sums``: instead of storing the result, return its energy
    (the buffer's row ``h`` is the state's ``start + h * tile``). Strides are literals per
    branch; one call site, to keep the compiled kernel (and its compile time) small."""
    w = COLUMN_WIDTH
    step = 1 << (3 * level)
    total = 0.0
    for hb in range(0, rows, step << count):
        for r in range(step):
            o = _row(hb + r)
            yr, yi = br[o:], bi[o:]
            if sums:
                en = energies[start + (hb + r) * tile :]
                # The energies' row stride a literal too: at run time it costs each of
                # their 8 rows a register of its own (measured at n = 20: 1.4x slower).
                if level == 1 and tile == 1 << 14:
                    total += _cols_energy(yr, yi, _row(8), en, 8 << 14, w, t)
                elif level == 1 and tile == 1 << 15:
                    total += _cols_energy(yr, yi, _row(8), en, 8 << 15, w, t)
                elif level == 1:
                    total += _cols_energy(yr, yi, _row(8), en, 8 << 16, w, t)
                elif level == 2 and tile == 1 << 14:
                    total += _cols_energy(yr, yi, _row(64), en, 64 << 14, w, t)
                elif level == 2 and tile == 1 << 15:
                    total += _cols_energy(yr, yi, _row(64), en, 64 << 15, w, t)
                elif level == 2:
                    total += _cols_energy(yr, yi, _row(64), en, 64 << 16, w, t)
                else:
                    total += _cols_energy(yr, yi, _row(512), en, step * tile, w, t)
            elif level == 0:
                _cols(yr, yi, _row(1), w, 3, t)
            elif level == 1:
                _cols(yr, yi, _row(8), w, count, t)
            elif level == 2:
                _cols(yr, yi, _row(64), w, count, t)
            else:
                _cols(yr, yi, _row(512), w, count, t)
    return total


def _gather(re: Any, im: Any, br: Any, bi: Any, rows: int, tq: int, col: int, t: float) -> None:
    """Column ``col`` of the state into the buffer, with the row-adjacent group (qubits
    ``tq .. tq+2``) applied on the way: the state's row stride is a literal per branch, which
    the vectoriser needs to group the 16 loads."""
    w = COLUMN_WIDTH
    for hb in range(0, rows, 8):
        o = _row(hb)
        src = (hb << tq) + col
        # bounded, so that LLVM can tell the state from the buffer (see _tile_in)
        end, last = src + (7 << tq) + w, o + 7 * (w + PAD) + w
        sr, si, yr, yi = re[src:end], im[src:end], br[o:last], bi[o:last]
        if tq == 14:
            _cols_in(sr, si, 1 << 14, yr, yi, w, t)
        elif tq == 15:
            _cols_in(sr, si, 1 << 15, yr, yi, w, t)
        else:
            _cols_in(sr, si, 1 << 16, yr, yi, w, t)


def _high_pass(
    re: Any,
    im: Any,
    energies: Any,
    t: float,
    m: int,
    rounds: int,
    br: Any,
    bi: Any,
    sums: bool,
    tq: int,
    lo: int,
    hi: int,
) -> float:
    """Mix qubits ``tq .. tq+m-1`` (``m >= 3``, ``tq >= TILE_QUBITS_FROM``) column by column,
    for the columns of low indices ``lo .. hi`` (whole columns). ``sums``: return the energy
    of the result (summed in the last group) and leave the state as it was; else store it."""
    w = COLUMN_WIDTH
    rows = 1 << m
    tile = 1 << tq
    full, part = m // 3, m % 3
    # Per round: level 0 (in round 0 done by the gather), the partial group if any, then the
    # other whole levels, so that a whole group comes last and can sum the energy.
    groups = full + (1 if part else 0)
    total = 0.0
    for col in range(lo, hi, w):
        _gather(re, im, br, bi, rows, tq, col, t)
        summed = False
        for rnd in range(rounds):
            for gi in range(1 if rnd == 0 else 0, groups):
                level, count = gi, 3
                if part and gi == 1:
                    level, count = full, part
                elif part and gi > 1:
                    level = gi - 1
                here = sums and rnd == rounds - 1 and gi == groups - 1 and count == 3
                total += _col_group(br, bi, rows, level, count, t, here, energies, col, tile)
                summed = summed or here
        for h in range(rows):
            o = _row(h)
            dst = h * tile + col
            sr, si = br[o : o + w], bi[o : o + w]
            if sums and not summed:
                en = energies[dst : dst + w]
                for k in range(w):
                    total += (sr[k] * sr[k] + si[k] * si[k]) * en[k]
            elif not sums:
                dr, di = re[dst : dst + w], im[dst : dst + w]
                for k in range(w):
                    dr[k] = sr[k]
                    di[k] = si[k]
    return total


def _energy(re: Any, im: Any, energies: Any) -> float:
    total = 0.0
    for i in range(re.shape[0]):
        total += (re[i] * re[i] + im[i] * im[i]) * energies[i]
    return total


if njit is not None:

    @intrinsic  # type: ignore[misc]
    def _prefetch_w(typingctx: Any, arr: Any, i: Any) -> Any:
        sig = types.void(arr, i)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = cgutils.get_item_pointer(
                context, builder, aryty, ary, [args[1]], wraparound=False
            )
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            builder.call(fn, [ptr, i32(1), i32(3), i32(1)])  # write, keep in all levels, data
            return context.get_dummy_value()

        return sig, codegen

    _V8 = ir.VectorType(ir.DoubleType(), 8)
    _LANES = ir.VectorType(ir.IntType(32), 8)

    @intrinsic  # type: ignore[misc, no-redef]
    def _lanes3(typingctx: Any, arr: Any, ro: Any, io: Any, t: Any) -> Any:
        sig = types.void(arr, ro, io, t)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            pointers = [
                builder.bitcast(
                    cgutils.get_item_pointer(context, builder, aryty, ary, [at], wraparound=False),
                    _V8.as_pointer(),
                )
                for at in (args[1], args[2])
            ]
            r, i = (builder.load(p, align=8) for p in pointers)
            undef = ir.Constant(_V8, ir.Undefined)
            one = builder.insert_element(undef, args[3], ir.IntType(32)(0))
            tv = builder.shuffle_vector(one, undef, ir.Constant(_LANES, [0] * 8))
            minus_tv = builder.fneg(tv)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8, [_V8, _V8, _V8]), "llvm.fma.v8f64"
            )
            for s in (1, 2, 4):
                partner = ir.Constant(_LANES, [k ^ s for k in range(8)])
                i_partner = builder.shuffle_vector(i, undef, partner)
                r_partner = builder.shuffle_vector(r, undef, partner)
                r = builder.call(fma, [tv, i_partner, r])
                i = builder.call(fma, [minus_tv, r_partner, i])
            builder.store(r, pointers[0], align=8)
            builder.store(i, pointers[1], align=8)
            return context.get_dummy_value()

        return sig, codegen

    _inline = njit(cache=True, nogil=True, fastmath=True, inline="always")
    _bf = _inline(_bf)
    _quad = _inline(_quad)
    _oct = _inline(_oct)
    _rows = _inline(_rows)
    _rows_out = _inline(_rows_out)
    _pos = _inline(_pos)
    _cols = _inline(_cols)
    _phased = _inline(_phased)
    _tile_in = _inline(_tile_in)
    _tile_low3 = _inline(_tile_low3)
    _tile_mix = _inline(_tile_mix)
    _row = _inline(_row)
    _cols_in = _inline(_cols_in)
    _cols_energy = _inline(_cols_energy)
    _col_group = _inline(_col_group)
    _gather = _inline(_gather)
    # not inlined: its own fast-math flags, without reassociation (see its docstring)
    _phase_chunk = njit(cache=True, nogil=True, fastmath={"nnan", "ninf", "nsz", "contract"})(
        _phase_chunk
    )
    _low_pass = njit(cache=True, nogil=True, fastmath=True)(_low_pass)
    _high_pass = njit(cache=True, nogil=True, fastmath=True)(_high_pass)
    _energy = njit(cache=True, nogil=True, fastmath=True)(_energy)


def tile_qubits(num_qubits: int) -> int:
    """Qubits of the first walk's tiles for an ``n``-qubit state (``n >= MIN_TILE_QUBITS``):
    all of them up to ``MAX_TILE_QUBITS``; beyond, the column walk gets at least 3 (its
    first group is whole). The split is measured (knapsack QUBO, p = 1): a bigger tile costs
    more per amplitude once it outgrows L1/L2 (2.3 ns at 2^14 against 3.7 ns at 2^16, n = 22),
    a longer column walk more per amplitude once its buffer outgrows L2."""
    if num_qubits <= MAX_TILE_QUBITS:
        return num_qubits
    if num_qubits >= 25:
        return MAX_TILE_QUBITS
    return max(TILE_QUBITS_FROM, min(15, num_qubits - 7))


def column_buffer_size(num_qubits: int) -> int:
    """Length of each (real, imaginary) column buffer for ``num_qubits``."""
    last = (1 << (num_qubits - tile_qubits(num_qubits))) - 1
    return last * (COLUMN_WIDTH + PAD) + PAD * ((last >> 3) + (last >> 9)) + COLUMN_WIDTH


def mixer_factors(beta: float, num_qubits: int) -> tuple[float, float, int]:
    """``(t, scale, rounds)``: ``RX(2 beta)^{(x) n} = scale * prod_q (1 - i t X_q)^rounds``."""
    c = math.cos(beta)
    if abs(c) >= HALF_ANGLE_BELOW:
        return math.tan(beta), c**num_qubits, 1
    half = 0.5 * beta
    return math.tan(half), math.cos(half) ** (2 * num_qubits), 2


def evolve_x(
    re: NDArray[np.float64],
    im: NDArray[np.float64],
    *,
    phase_tables: list[NDArray[np.complex128]] | None,
    level_index: NDArray[np.int32] | None,
    energies: NDArray[np.float64],
    betas: list[float],
    num_qubits: int,
    want_energy: bool = False,
    plus: bool = False,
    threads: int | None = None,
    gammas: list[float] | None = None,
    energy_bound: float | None = None,
) -> float:
    """Apply ``p`` layers in place to the state held as its real and imaginary parts (two
    contiguous float64 arrays of length ``2^n``, ``n >= MIN_TILE_QUBITS``): layer ``k``
    multiplies by ``phase_tables[k]`` (gathered through ``level_index`` when given, else
    elementwise) and mixes with ``RX(2 betas[k])``. Without ``phase_tables`` (and without
    ``level_index``) layer ``k``'s phases ``exp(-i gammas[k] E)`` are computed in the walk
    itself, chunk by chunk, from ``energies`` (``|gammas[k] E| <= COMPUTED_PHASE_MAX_ARG``;
    ``energy_bound``, the largest ``|E|``, spares a pass to find it).
    ``plus``: the state is ``|+>^n`` and ``re``/``im`` need not hold it (they are only
    written).

    ``threads`` (default: :func:`set_threads`'s, else 1) walk disjoint tiles, then disjoint
    columns, each with scratch of its own; from ``THREADED_FROM_QUBITS`` only, below which
    handing the parts over costs more than it saves. The sums are added in a fixed order, so
    the energy does not depend on which thread finishes first.

    Returns the energy expectation ``<psi|E|psi>`` after the last layer when ``want_energy``,
    else ``nan``. With ``want_energy`` the last layer's high-qubit walk sums the energy and
    does not store the state, so ``re``/``im`` then hold no meaningful state (unless
    ``n <= MAX_TILE_QUBITS``: no column walk).
    """
    n = num_qubits
    if n < MIN_TILE_QUBITS:
        raise ValueError(f"the fused kernel needs at least {MIN_TILE_QUBITS} qubits, got {n}")
    tq = tile_qubits(n)
    m = n - tq
    if m and not (m >= 3 and TILE_QUBITS_FROM <= tq <= MAX_TILE_QUBITS):
        raise ValueError(f"no column walk for {m} qubits after tiles of {tq}")
    parts = 1 if n < THREADED_FROM_QUBITS else max(1, _threads if threads is None else threads)
    tiles = _split(1 << n, 1 << tq, parts)
    columns = _split(1 << tq, COLUMN_WIDTH, parts) if m else [(0, 0)]
    size = column_buffer_size(n) if m else 1
    buffers = [(np.empty(size), np.empty(size)) for _ in columns]
    scratch = [np.empty(SCRATCH) for _ in tiles]
    if phase_tables is not None and len(phase_tables) != len(betas):
        raise ValueError("one phase table per beta")
    chunk_phases = [np.empty(2 * CHUNK) for _ in tiles]
    index = level_index if level_index is not None else np.zeros(1, dtype=np.int32)
    if level_index is not None:
        mode = GATHER
    elif phase_tables is not None:
        mode = TABLE
    else:
        mode = COMPUTED
        if gammas is None or len(gammas) != len(betas):
            raise ValueError("phases computed in the walk need one gamma per beta")
        largest = float(np.abs(energies).max()) if energy_bound is None else energy_bound
        bound = largest * max(abs(g) for g in gammas)
        if not bound <= COMPUTED_PHASE_MAX_ARG:
            raise ValueError(f"|gamma E| up to {bound:.3g} is past COMPUTED_PHASE_MAX_ARG")
    no_table = np.ones(1, dtype=np.complex128)
    energy = math.nan
    amp0 = 1.0 / math.sqrt(float(1 << n))
    for layer, beta in enumerate(betas):
        table = no_table if phase_tables is None else phase_tables[layer]
        gamma = 0.0 if gammas is None else gammas[layer]
        t, scale, rounds = mixer_factors(beta, n)
        first = plus and layer == 0
        g = scale * amp0 if first else scale
        low = partial(_low_pass, re, im, table, index, energies, gamma, mode, first, g, t, rounds)
        _in_parts(
            [
                partial(low, x, ph, tq, a, b)
                for x, ph, (a, b) in zip(scratch, chunk_phases, tiles, strict=True)
            ]
        )
        last = layer == len(betas) - 1
        if m:
            sums = want_energy and last
            totals = _in_parts(
                [
                    partial(_high_pass, re, im, energies, t, m, rounds, br, bi, sums, tq, a, b)
                    for (br, bi), (a, b) in zip(buffers, columns, strict=True)
                ]
            )
            if want_energy and last:
                energy = float(math.fsum(totals))
        elif want_energy and last:
            energy = float(_energy(re, im, energies))
    return energy


#: From this many qubits an evaluation may be split across threads (``evolve_x``): at n = 16
#: a whole evaluation takes ~0.3 ms, of the order of waking a pool thread and joining it.
THREADED_FROM_QUBITS = 18
_threads = 1
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def set_threads(threads: int) -> None:
    """Threads each evaluation of this process uses from now on (``evolve_x``'s default).

    A node worker sets its ``blas_threads`` here: a worker given two cores splits an
    evaluation across both instead of leaving one idle."""
    global _threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    _threads = threads


def _split(total: int, step: int, parts: int) -> list[tuple[int, int]]:
    """``range(0, total)`` in at most ``parts`` contiguous runs of whole ``step``s."""
    steps = total // step
    parts = max(1, min(parts, steps))
    bounds = [step * (steps * k // parts) for k in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def _in_parts(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` (compiled, GIL-free) at once: the first on this thread, the rest on the
    pool; results in the calls' order."""
    if len(calls) == 1:
        return [calls[0]()]
    pool = _worker_pool(len(calls) - 1)
    futures = [pool.submit(call) for call in calls[1:]]
    first = calls[0]()
    return [first, *(f.result() for f in futures)]


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            old, _pool = _pool, ThreadPoolExecutor(workers, thread_name_prefix="qaoa-kernel")
            _pool_size = workers
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def plus_parts(num_qubits: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``|+>^n`` as (real part, imaginary part)."""
    size = 1 << num_qubits
    return np.full(size, 1.0 / math.sqrt(size)), np.zeros(size)


def warm() -> None:
    """Compile (or load from numba's cache) the kernels now, on a small state, so that the
    first real evaluation in a fresh worker does not pay for it."""
    if not AVAILABLE:
        return
    # one tile alone, and tiles with a column walk (the two compiled kernels)
    for n in (MIN_TILE_QUBITS, MAX_TILE_QUBITS + 1):
        re, im = plus_parts(n)
        energies = np.zeros(1 << n)
        gather = np.zeros(1 << n, dtype=np.int32)
        elementwise = np.ones(1 << n, dtype=np.complex128)
        # the three phase sources: gathered, a table per amplitude, computed in the walk
        sources = (
            (gather, [elementwise[:1]] * 2, None),
            (None, [elementwise] * 2, None),
            (None, None, [0.2, 0.3]),
        )
        for index, tables, gammas in sources:
            for plus in (True, False):
                evolve_x(
                    re,
                    im,
                    phase_tables=tables,
                    level_index=index,
                    energies=energies,
                    betas=[0.1, 1.5],
                    gammas=gammas,
                    num_qubits=n,
                    want_energy=True,
                    plus=plus,
                )
