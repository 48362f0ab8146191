"""What the σ and spectrum kernels report and the constants they share, torch or NumPy.

:mod:`.spectral`/:mod:`.svd` (torch) and :mod:`.spectral_numpy`/:mod:`.svd_numpy` (NumPy)
build on these; the module docstrings of :mod:`.spectral` and :mod:`.svd` explain the methods
and where each constant was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class Method(str, Enum):
    AUTO = "auto"
    EXACT = "exact"
    LANCZOS = "lanczos"
    POWER = "power"
    DENSE = "dense"


class BoundKind(str, Enum):
    """What a reported σ is relative to the true σ."""

    EXACT = "exact"  # two-sided, within float64 rounding (see SigmaEstimate.certified)
    LOWER = "lower"  # never above the true σ (up to float64 rounding, ~1e-13 relative)


DEFAULT_POWER_ITERS = 1000
DEFAULT_POWER_TOL = 1e-6
DEFAULT_SEED = 0
#: Default relative error target of ``auto`` and ``lanczos``.
DEFAULT_TOL = 1e-4
#: ``exact`` stops when the estimated relative error of λ = σ² is below this (σ: half of it).
EXACT_TOL = 1e-12
#: Below this σ error target float32 rounding of WᵀW products (~1e-7 relative) gets in the way,
#: so ``auto``/``lanczos`` work in float64.
FLOAT32_TOL_FLOOR = 1e-6
#: Block size of float32 block Lanczos (``auto``/``lanczos``): 4 resolves a top cluster of up to
#: 4 singular values before the loose stopping rule can be fooled (module docstring).
BLOCK_SIZE = 4
#: Block size of ``exact``'s float64 run: its 1e-12 residual target cannot be met by a Ritz vector
#: that mixes cluster members, so a smaller block suffices and is cheaper per step. On the
#: 302M-parameter benchmark checkpoint: b=2 1.47 s, b=3 1.57 s, b=4 1.87 s (same accuracy).
EXACT_BLOCK_SIZE = 2
#: Block steps always taken after a warm start (see ``_block_lanczos``).
WARM_START_MIN_STEPS = 3
#: Largest Krylov dimension before giving up (``exact``/``auto`` then go dense).
MAX_KRYLOV_DIM = 480
#: ``auto`` sends matrices whose smaller side is at most this to the dense method. Measured at
#: 4096×side, one thread: dense 1.4/5.6/16/69 ms at side 64/128/256/512; float32 block Lanczos to
#: 1e-4 1.2–3.2/1.7–6.8/2.6–19/5.6–36 ms (spiked–Gaussian spectra).
DENSE_MAX_SIDE = 128
#: |e| up to which 2^e is a finite float32 factor with room to spare (2^127 is the largest).
FLOAT32_SAFE_EXPONENT = 120
#: ``exact`` goes dense up to this side: float64 Lanczos to 1e-12 took 6.6–59 ms at side 256
#: (dense 16 ms, and certified), 16–105 ms at 512 (dense 70 ms).
EXACT_DENSE_MAX_SIDE = 256
#: Chunk of W converted at a time (elements): 256K floats keep fp32/fp64 chunks in the 1–2 MB L2.
CHUNK_ELEMENTS = 1 << 18
#: Fewest rows (of the longer side) per rank-k update of a float64 Gram matrix, whatever its
#: size: the chunk is then side × 512 float64 (16 MB at side 4096), the update compute-bound.
GRAM_MIN_RANK = 512
#: ``exact_sigma`` forms only the lower block triangle of Gram matrices from this side on, in
#: block rows of ``GRAM_BLOCK`` (below it the saving does not pay for the smaller GEMMs).
GRAM_BLOCK_SIDE = 1024
GRAM_BLOCK = 512


@dataclass(frozen=True)
class SigmaEstimate:
    """σ of one matrix and how far it can be trusted.

    ``iterations`` counts power steps or block-Lanczos steps (each one pass over W with the
    block). ``error_estimate`` is the estimated relative error (σ_true − σ)/σ_true from the Ritz
    residual and gap: an estimate, not a proof. ``certified`` means the upper side is proven:
    by a backward-stable dense method (within rounding) or by the Cholesky certificate, whose
    proven bound is then in ``upper``. ``algorithm`` names what actually ran.
    """

    sigma: float
    method: Method
    bound: BoundKind
    iterations: int | None = None
    converged: bool | None = None
    error_estimate: float | None = None
    certified: bool = False
    upper: float | None = None
    algorithm: str = ""


#: Below this σ_min/σ₁ the Gram matrix's rounding (≈ ε₆₄·(σ₁/σ)² relative) would exceed ~1e-6,
#: so the layer is recomputed by gesdd.
GRAM_RESOLUTION = 1e-5
#: Default relative error target of each of the K largest σ (``--top-k``).
TOP_K_TOL = 1e-8
#: Rayleigh–Ritz (an eigh of the projected matrix, the largest cost after the products) runs
#: again only once the Krylov space has grown by this factor (every step while it is small).
TOP_K_CHECK_GROWTH = 1.2
#: K at or above this fraction of min(m, n) goes dense: Lanczos would need most of the space.
TOP_K_DENSE_FRACTION = 0.25
#: Largest block of the top-K block Lanczos.
TOP_K_MAX_BLOCK = 16
#: Krylov dimension cap of the top-K run (at least this, or 8·K).
TOP_K_MIN_DIM = 480


@dataclass(frozen=True)
class Spectrum:
    """Singular values of one matrix, largest first (float64, read-only), and how they came.

    ``complete`` is True when these are all min(m, n) values. For a top-K run, ``errors`` holds
    each value's estimated relative error (None when dense), ``steps`` the block steps, and
    ``converged`` whether every value reached the tolerance.
    """

    values: np.ndarray
    algorithm: str
    complete: bool = True
    errors: np.ndarray | None = None
    steps: int | None = None
    converged: bool | None = None


def _readonly(values: np.ndarray) -> np.ndarray:
    values.flags.writeable = False
    return values


def _readonly(values: np.ndarray) -> np.ndarray:
    values.flags.writeable = False
    return values


@dataclass(frozen=True)
class SigmaInterval:
    """A certified enclosure lower ≤ σ_max ≤ upper and the methods that proved each side."""

    lower: float
    upper: float
    lower_method: str
    upper_method: str

    @property
    def relative_width(self) -> float:
        """(upper − lower)/upper, 0 for the zero matrix."""
        return 0.0 if self.upper == 0.0 else (self.upper - self.lower) / self.upper
