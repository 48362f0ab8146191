"""A joint Lipschitz bound for a stride-1 conv network segment: Fourier-domain LipSDP, proven.

A *program* is a segment of a network on images of one spatial size n (any number of axes):

    x = v₀ (c₀ channels);  for k = 1..K:  z_k = v_k = φ_k(u_k),  u_k = Σ_j C_kj v_j  (j < k);
    output o = Σ_j C_oj v_j,

each C a zero-padded stride-1 convolution that keeps the size n (pads p_b + p_e = d(k − 1)) or
the identity, each φ_k elementwise and slope-restricted to [0, β_k] (ReLU, LeakyReLU with
0 ≤ a ≤ 1 relaxed to [0, 1], tanh, sigmoid [0, ¼]). Residual blocks relu(x + B·relu(A·x)),
conv chains and stacks of blocks are programs; :mod:`sncli.lipschitz.segments` finds them in
an ONNX graph.

**Step 1 — the torus (why zero padding costs nothing).** Embed every image in the torus
ℤ_N (N ≥ n + max p_b + max p_e per axis) at [0, n). A zero-padded conv reads its input at
offsets i + d·t − p_b ∈ [−p_b, n − 1 + p_e]; none wraps onto [0, n), so the zero-padded conv
of an input supported on [0, n) equals the circular conv on ℤ_N restricted to [0, n). Every
conv here reads x (embedded: zero off [0, n)) or an activation output. For differences of
two inputs, Δz_k = D_k Δu_k with D_k diagonal, entries in [0, β_k] on [0, n) (slope
restriction: (φ(a) − φ(b))/(a − b) ∈ [0, β]) and 0 off it (the torus program sets z_k = 0
there: the padding ring folded into the activation, still slope-restricted to [0, β]). So the
true differences are a trajectory of the circular program whose activations have slopes in
[0, β_k]; and ‖Δo‖ on [0, n) ≤ ‖Δo‖ on ℤ_N.

**Step 2 — LipSDP with one multiplier per channel (Fazlyab et al., NeurIPS 2019; the S-procedure
over a DAG as in Pauli et al., 2024, arXiv 2405.01125).** Per pixel, z(βu − z) ≥ 0 for any
slope in [0, β]. For t_{k,c} ≥ 0, if for all trajectories

    ρ²‖Δx‖² − ‖Δo‖² − Σ_{k,c} t_{k,c} Σ_pixels 2·Δz(βΔu − Δz) ≥ 0,          (★)

then ‖Δo‖ ≤ ρ‖Δx‖ (the sum is ≥ 0). A multiplier constant over pixels commutes with the
unitary DFT, and by Parseval (★) is Σ_ω ξ(ω)ᴴ M(ω) ξ(ω) with ξ(ω) the DFT of (Δx, Δz_1, …) and

    M(ω) = ρ²E₀ᴴE₀ − N(ω),
    N(ω) = Ô(ω)ᴴÔ(ω) + Σ_k [β_k(E_kᴴT_kÛ_k(ω) + Û_k(ω)ᴴT_kE_k) − 2E_kᴴT_kE_k],

with Ĉ(ω) = Σ_t K_t e^{iω·s_t} (s_t = d·t − p_b) the symbol of a circular conv (Sedghi, Gupta &
Long, ICLR 2019), E_k the selection of v_k. So M(ω) ⪰ 0 at every ω of the N-grid proves (★).
With R = −N restricted to the z's ≻ 0, that holds iff ρ² ≥ λ_max of the Schur complement
N₀₀ + N₀ᵣR⁻¹Nᵣ₀; the smallest such ρ²(T) is convex in T and its gradient is ξᴴ(∂N/∂t)ξ at the
top eigenvector (ξ = (v, R⁻¹Nᵣ₀v)), as in LipDiff (Wang et al., ICLR 2024).

**Step 3 — multipliers.** A feasible start backwards (t_K from the output term, then each t_k
from the Schur complement of the later variables, times a margin), a search over one scale
per layer, then Adam on log t per channel, within ``seconds``. Every iterate is feasible.

**Step 4 — the proof.** For the final T, ρ² is raised by a relative margin and M(ω) is shown
positive definite at every grid frequency (half of them: M(−ω) = conj M(ω) for real kernels),
as a real symmetric 2D×2D matrix, by a float64 Cholesky with a rounding allowance
(:func:`sncli.numerics.eclipse._certified_positive_definite`, Higham Thm 10.3) after an exact
power-of-two diagonal congruence. The allowance covers the symbols' evaluation error
(entrywise √2(γ_T + 33u)·Σ_t|K_t|, the argument of :func:`sncli.numerics.conv._symbol_error`,
phases reduced exactly in integers) and the arithmetic forming N (entrywise γ·|N|, computed
with absolute values). The bound returned is √ρ² rounded up.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sncli.errors import NumericalError
from sncli.numerics.floating import SLACK, UNIT_ROUNDOFF, gamma

if TYPE_CHECKING:
    import numpy as np

_U = UNIT_ROUNDOFF
#: Programs whose evaluation (frequencies × D³, D = Σ channels) exceeds this are refused
#: (about 0.1–0.3 s per evaluation on one core).
PROGRAM_MAX_COST = 3e8
#: Default optimization budget (seconds) after the feasible start.
PROGRAM_SECONDS = 3.0
#: Temperature (relative to ρ²) of the softmax over frequencies in the descent's gradient.
_SMOOTH = 0.02
#: The relative room on R's diagonal every iterate keeps (so that the proof can succeed).
_ROOM = 1e-7
#: Relative margins on ρ² tried by the proof, in turn.
_MARGINS = (1e-9, 1e-7, 1e-5, 1e-3)


@dataclass(frozen=True)
class ConvTerm:
    """C·v_source: a zero-padded stride-1 conv (kernel (out, in, *k), dilation, begin pads),
    or the identity (``kernel`` None)."""

    source: int
    kernel: np.ndarray | None = None
    dilation: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()


@dataclass(frozen=True)
class Activation:
    """z = φ(Σ terms), φ slope-restricted to [0, ``beta``] elementwise, ``channels`` wide."""

    channels: int
    terms: tuple[ConvTerm, ...]
    beta: float = 1.0


@dataclass(frozen=True)
class ConvProgram:
    """x (``channels`` × ``size``) → activations → output (module docstring)."""

    channels: int
    size: tuple[int, ...]
    activations: tuple[Activation, ...]
    output: tuple[ConvTerm, ...]


@dataclass(frozen=True)
class ProgramBound:
    """A proven bound on the program's Lipschitz constant (ℓ2 → ℓ2 over whole images)."""

    bound: float
    estimate: float  # √ρ² in float64 at the multipliers proven (a hair below ``bound``)
    start: float  # √ρ² at the feasible start (before the search)
    torus: tuple[int, ...]
    frequencies: int
    evaluations: int


# ------------------------------------------------------------------------ symbols


def torus_size(program: ConvProgram) -> tuple[int, ...]:
    """N per axis: n + the largest begin pad + the largest end pad of any conv (step 1)."""
    dims = len(program.size)
    begin, end = [0] * dims, [0] * dims
    for term in _all_terms(program):
        if term.kernel is None:
            continue
        for a in range(dims):
            reach = term.dilation[a] * (term.kernel.shape[2 + a] - 1)
            begin[a] = max(begin[a], term.pads[a])
            end[a] = max(end[a], reach - term.pads[a])
    return tuple(n + b + e for n, b, e in zip(program.size, begin, end, strict=True))


def _all_terms(program: ConvProgram) -> list[ConvTerm]:
    return [t for act in program.activations for t in act.terms] + list(program.output)


def _frequencies(torus: tuple[int, ...]) -> np.ndarray:
    """Integer frequencies, one of each ±ω pair (the largest axis halved), (F, d)."""
    import numpy as np

    half = max(range(len(torus)), key=lambda j: torus[j])
    ranges = [np.arange(m // 2 + 1 if j == half else m) for j, m in enumerate(torus)]
    mesh = np.meshgrid(*ranges, indexing="ij")
    return np.stack([g.reshape(-1) for g in mesh], axis=1).astype(np.int64)


def _symbol(
    term: ConvTerm, torus: tuple[int, ...], freqs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(Ĉ at the frequencies (F, out, in) complex128, an entrywise bound on its error (out, in)).

    Ĉ(ω) = Σ_t K_t e^{iω·s_t}, s_t = d·t − p_b; ω·s_t is reduced exactly in integers
    (θ = 2π·r/L, L = ∏N), so each phase factor is within 32u of the exact one, and each entry's
    error is at most √2(γ_T + 33u)·Σ_t|K_t| (the argument of ``conv._symbol_error``)."""
    import numpy as np

    kernel = np.asarray(term.kernel, dtype=np.float64)
    out_ch, in_ch = kernel.shape[:2]
    spatial = kernel.shape[2:]
    grids = np.meshgrid(*[np.arange(k) for k in spatial], indexing="ij")
    offsets = np.stack([g.reshape(-1) for g in grids], axis=1)
    offsets = offsets * np.asarray(term.dilation) - np.asarray(term.pads)
    period = math.prod(torus)
    weight = np.asarray([period // m for m in torus], dtype=np.int64)
    phase = (freqs[:, None, :] * offsets[None, :, :]) % np.asarray(torus, dtype=np.int64)
    index = (phase * weight).sum(axis=-1) % period
    theta = index.astype(np.float64) / period * (2.0 * math.pi)
    flat = kernel.reshape(out_ch * in_ch, -1).T  # (T, out·in)
    symbol = (np.cos(theta) @ flat) + 1j * (np.sin(theta) @ flat)
    count = flat.shape[0]
    error = (
        math.sqrt(2.0)
        * (gamma(count) + 33 * _U)
        * np.abs(kernel).reshape(out_ch, in_ch, -1).sum(axis=2)
        * (1 + gamma(count + 2))
        * SLACK
    )
    return symbol.reshape(-1, out_ch, in_ch), error


@dataclass
class _Forms:
    """The program at every frequency: N(ω; T) = base + Σ_k (parts of T_k), and error terms."""

    offsets: list[int]
    base: np.ndarray  # (F, D, D) ÔᴴÔ
    base_abs: np.ndarray  # (D, D) |Ô|ᴴ|Ô| over every ω (an upper bound)
    base_err: np.ndarray  # (D, D) entrywise error of ÔᴴÔ from the symbols' errors
    u: list[np.ndarray]  # per activation: (F, c_k, D) Û_k
    u_abs: list[np.ndarray]  # (c_k, D): max over ω of |Û_k| entrywise (an upper bound)
    u_err: list[np.ndarray]  # (c_k, D): entrywise error of Û_k
    betas: list[float]
    freqs: int
    gamma: float  # of the arithmetic forming one entry of N (complex dots, ≤ rows + 8 terms)


def _forms(program: ConvProgram, torus: tuple[int, ...]) -> _Forms:
    import numpy as np

    freqs = _frequencies(torus)
    count = len(freqs)
    widths = [program.channels] + [a.channels for a in program.activations]
    offsets = [0]
    for w in widths:
        offsets.append(offsets[-1] + w)
    dim = offsets[-1]

    def assemble(terms: tuple[ConvTerm, ...], rows: int) -> tuple[np.ndarray, ...]:
        mat = np.zeros((count, rows, dim), dtype=np.complex128)
        absolute = np.zeros((rows, dim))
        error = np.zeros((rows, dim))
        for term in terms:
            cols = slice(offsets[term.source], offsets[term.source + 1])
            if term.kernel is None:
                mat[:, :, cols] += np.eye(rows)
                absolute[:, cols] += np.eye(rows)
                continue
            symbol, err = _symbol(term, torus, freqs)
            if symbol.shape[1:] != (rows, widths[term.source]):
                raise ValueError(
                    f"a conv maps {widths[term.source]} → {rows} channels where "
                    f"{symbol.shape[2]} → {symbol.shape[1]} was expected"
                )
            mat[:, :, cols] += symbol
            kernel = np.abs(np.asarray(term.kernel, dtype=np.float64))
            absolute[:, cols] += kernel.reshape(*kernel.shape[:2], -1).sum(axis=2) + err
            error[:, cols] += err
        return mat, absolute * (1 + 4 * _U), error

    us, us_abs, us_err = [], [], []
    for act in program.activations:
        mat, absolute, error = assemble(act.terms, act.channels)
        us.append(mat)
        us_abs.append(absolute)
        us_err.append(error)
    out_rows = _output_rows(program, widths)
    out, out_abs, out_err = assemble(program.output, out_rows)
    base = np.conj(np.swapaxes(out, 1, 2)) @ out
    # |ÔᴴÔ − OᴴO| ≤ |Ô|ᴴE + Eᴴ|Ô| + EᴴE entrywise
    spread = (out_abs.T @ out_err + out_err.T @ out_abs + out_err.T @ out_err) * (1 + 8 * _U)
    return _Forms(
        offsets,
        base,
        out_abs.T @ out_abs * (1 + 4 * _U),
        spread,
        us,
        us_abs,
        us_err,
        [a.beta for a in program.activations],
        count,
        gamma(max(dim, out_rows) + 8, complex_arith=True),
    )


def _output_rows(program: ConvProgram, widths: list[int]) -> int:
    for term in program.output:
        return widths[term.source] if term.kernel is None else int(term.kernel.shape[0])
    raise ValueError("the program has no output")


def _n_matrix(forms: _Forms, ts: list[np.ndarray]) -> np.ndarray:
    import numpy as np

    n = forms.base.copy()
    for k, (u, t, beta) in enumerate(zip(forms.u, ts, forms.betas, strict=True)):
        rows = slice(forms.offsets[k + 1], forms.offsets[k + 2])
        tu = (beta * t)[None, :, None] * u
        n[:, rows, :] += tu
        n[:, :, rows] += np.conj(np.swapaxes(tu, 1, 2))
        n[:, rows, rows] -= np.diag(2.0 * t)
    return n


def _rho2(
    forms: _Forms, ts: list[np.ndarray], grad: bool = False
) -> tuple[float, list[np.ndarray] | None]:
    """(ρ²(T), its gradient in T or None); +∞ when R = −N on the z's is not positive definite."""
    import numpy as np

    n = _n_matrix(forms, ts)
    c0 = forms.offsets[1]
    r = -n[:, c0:, c0:]
    # feasible only with room: R − 1e-7·diag(R) ≻ 0, so that the proof's allowance fits
    room = r - _ROOM * np.real(np.diagonal(r, axis1=1, axis2=2))[:, :, None] * np.eye(r.shape[1])
    try:
        np.linalg.cholesky(room)
    except np.linalg.LinAlgError:
        return math.inf, None
    y = np.linalg.solve(r, n[:, c0:, :c0])
    schur = n[:, :c0, :c0] + n[:, :c0, c0:] @ y
    values, vectors = np.linalg.eigh((schur + np.conj(np.swapaxes(schur, 1, 2))) / 2)
    where = int(values[:, -1].argmax())
    top = float(values[where, -1])
    if not grad:
        return top, None
    # a smoothed max over frequencies: softmax weights on the top eigenvalues (the gradient of
    # each is ξᴴ(∂N/∂t)ξ at its eigenvector, ξ = (v, R⁻¹Nᵣ₀v))
    weights = np.exp((values[:, -1] - top) / (_SMOOTH * max(abs(top), 1e-300)))
    weights /= weights.sum()
    v = vectors[:, :, -1]  # (F, c0)
    xi = np.concatenate([v, (y @ v[:, :, None])[:, :, 0]], axis=1)  # (F, D)
    grads = []
    for k, (u, beta) in enumerate(zip(forms.u, forms.betas, strict=True)):
        z = xi[:, forms.offsets[k + 1] : forms.offsets[k + 2]]
        pre = (u @ xi[:, :, None])[:, :, 0]
        per = 2.0 * beta * np.real(np.conj(z) * pre) - 2.0 * np.abs(z) ** 2
        grads.append(weights @ per)
    return top, grads


# ------------------------------------------------------------------------ multipliers


def _start(forms: _Forms, margin: float) -> list[np.ndarray]:
    """Feasible multipliers, last activation first: t_k = margin·½λ_max of what the later
    variables need (the Schur complement onto z_k with t_k = 0), so R ≻ 0."""
    import numpy as np

    count = len(forms.u)
    widths = [forms.offsets[k + 2] - forms.offsets[k + 1] for k in range(count)]
    ts: list[np.ndarray] = [np.ones(w) for w in widths]
    for k in reversed(range(count)):
        ts[k] = np.zeros_like(ts[k])
        n = _n_matrix(forms, ts)
        low = forms.offsets[k + 1]
        width = forms.offsets[k + 2] - low
        sub = -n[:, low:, low:]
        need = -sub[:, :width, :width]
        if sub.shape[1] > width:
            rest = sub[:, width:, width:]
            need = need + sub[:, :width, width:] @ np.linalg.solve(rest, sub[:, width:, :width])
        top = float(np.linalg.eigvalsh((need + np.conj(np.swapaxes(need, 1, 2))) / 2)[:, -1].max())
        ts[k] = np.full(width, max(top, 1e-300) * margin / 2.0)
    return ts


def _optimize(
    forms: _Forms, seconds: float
) -> tuple[list[list[np.ndarray]], list[float], float, int]:
    """(candidate multipliers, ρ² at each, ρ² at the start, evaluations): the best feasible
    point found, then the start (tried by the proof in turn)."""
    import numpy as np

    deadline = time.monotonic() + seconds
    evaluations = 0
    best_value, best = math.inf, None
    for margin in (1.25, 1.5, 2.0, 3.0):
        ts = _start(forms, margin)
        value, _ = _rho2(forms, ts)
        evaluations += 1
        if value < best_value:
            best_value, best = value, ts
    if best is None:
        raise ArithmeticError("no feasible multipliers at the start")
    start, first_point = best_value, best
    layers = len(best)
    improved = True
    while improved and time.monotonic() < deadline:  # one scale per layer
        improved = False
        for k in range(layers):
            for factor in (0.5, 0.7, 0.85, 1.18, 1.4, 2.0):
                trial = [t.copy() for t in best]
                trial[k] = trial[k] * factor
                value, _ = _rho2(forms, trial)
                evaluations += 1
                if value < best_value * (1 - 1e-6):
                    best_value, best, improved = value, trial, True
                if time.monotonic() > deadline:
                    break
    logs = [np.log(t) for t in best]
    first = [np.zeros_like(x) for x in logs]
    second = [np.zeros_like(x) for x in logs]
    rate, step = 0.02, 0
    while time.monotonic() < deadline:  # Adam on log t, per channel
        step += 1
        ts = [np.exp(x) for x in logs]
        value, grads = _rho2(forms, ts, grad=True)
        evaluations += 1
        if not math.isfinite(value) or grads is None:
            logs = [np.log(t) for t in best]
            rate /= 2
            if rate < 1e-4:
                break
            continue
        if value < best_value:
            best_value, best = value, ts
        for k in range(layers):
            g = grads[k] * ts[k] / max(value, 1e-300)
            first[k] = 0.9 * first[k] + 0.1 * g
            second[k] = 0.999 * second[k] + 0.001 * g * g
            m_hat = first[k] / (1 - 0.9**step)
            v_hat = second[k] / (1 - 0.999**step)
            logs[k] = logs[k] - rate * m_hat / (np.sqrt(v_hat) + 1e-12)
    return [best, first_point], [best_value, start], start, evaluations


# ------------------------------------------------------------------------ the proof


def _certify(forms: _Forms, ts: list[np.ndarray], rho2: float) -> bool:
    """M(ω) = ρ²E₀ − N(ω) ⪰ 0 at every frequency, proven (module docstring, step 4)."""
    import numpy as np

    from sncli.numerics.eclipse import _certified_positive_definite

    n = _n_matrix(forms, ts)
    c0 = forms.offsets[1]
    dim = n.shape[1]
    # entrywise: the arithmetic's γ·|N| (|N| built from absolute values), plus the symbols' error
    absolute = np.array(forms.base_abs, copy=True)
    error = np.array(forms.base_err, copy=True)
    for k, (ua, ue, t, beta) in enumerate(
        zip(forms.u_abs, forms.u_err, ts, forms.betas, strict=True)
    ):
        rows = slice(forms.offsets[k + 1], forms.offsets[k + 2])
        part = (beta * t)[:, None] * ua
        absolute[rows, :] += part
        absolute[:, rows] += part.T
        absolute[rows, rows] += np.diag(2.0 * t)
        shift = (beta * t)[:, None] * ue
        error[rows, :] += shift
        error[:, rows] += shift.T
    absolute[:c0, :c0] += rho2 * np.eye(c0)
    bound = (forms.gamma * absolute + error) * (1 + 8 * _U)
    for f in range(forms.freqs):
        m = -n[f]
        m[:c0, :c0] += rho2 * np.eye(c0)
        upper = np.triu(m)
        herm = upper + np.conj(np.triu(m, 1)).T  # exactly Hermitian; each entry as computed
        herm[np.diag_indices(dim)] = np.real(np.diagonal(m))
        diag = np.real(np.diagonal(herm))
        if not (diag > 0).all():
            return False
        exps = np.array([math.frexp(float(v))[1] // 2 for v in diag])
        scale = np.ldexp(1.0, -exps)
        scaled = herm * scale[:, None] * scale[None, :]  # exact (powers of two)
        err = bound * scale[:, None] * scale[None, :]
        radius = float(np.linalg.norm(err)) * (1 + gamma(dim * dim + 2)) * SLACK
        real = np.block([[scaled.real, -scaled.imag], [scaled.imag, scaled.real]])
        if not _certified_positive_definite(real, radius):
            return False
    return True


def program_cost(program: ConvProgram) -> float:
    """Frequencies × D³: the work of one evaluation (compare :data:`PROGRAM_MAX_COST`)."""
    torus = torus_size(program)
    freqs = math.prod(torus) // max(torus) * (max(torus) // 2 + 1)
    dim = program.channels + sum(a.channels for a in program.activations)
    return float(freqs) * dim**3


def program_bound(program: ConvProgram, seconds: float = PROGRAM_SECONDS) -> ProgramBound:
    """A proven bound on the program's Lipschitz constant (module docstring). Raises
    ValueError for a program outside its conditions or over :data:`PROGRAM_MAX_COST`, and
    ArithmeticError when no certificate could be proven."""

    _validate(program)
    if program_cost(program) > PROGRAM_MAX_COST:
        raise ValueError(f"program too large (cost {program_cost(program):.3g})")
    torus = torus_size(program)
    forms = _forms(program, torus)
    candidates, values, start, evaluations = _optimize(forms, seconds)
    for (ts, value), margin in itertools.product(zip(candidates, values, strict=True), _MARGINS):
        rho2 = max(max(value, 0.0) * (1 + margin), 1e-300)
        if _certify(forms, ts, rho2):
            bound = math.nextafter(math.sqrt(rho2), math.inf)
            bound = math.nextafter(bound, math.inf)
            return ProgramBound(
                bound, math.sqrt(max(value, 0.0)), math.sqrt(max(start, 0.0)), torus,
                forms.freqs, evaluations,
            )  # fmt: skip
    raise ArithmeticError("the multipliers found could not be proven in float64")


def _validate(program: ConvProgram) -> None:
    import numpy as np

    dims = len(program.size)
    if not program.activations:
        raise ValueError("a program needs at least one activation")
    for k, act in enumerate(program.activations):
        if not (math.isfinite(act.beta) and act.beta >= 0):
            raise ValueError(f"activation {k}: slope bound {act.beta} is not in [0, ∞)")
        for term in act.terms:
            if not 0 <= term.source <= k:
                raise ValueError(f"activation {k + 1} reads v{term.source}, not an earlier value")
    for term in _all_terms(program):
        if term.kernel is None:
            continue
        kernel = np.asarray(term.kernel)
        if kernel.ndim != dims + 2 or len(term.dilation) != dims or len(term.pads) != dims:
            raise ValueError("a conv term's kernel, dilation or pads do not match the size")
        if not np.isfinite(kernel).all():
            raise NumericalError("a conv kernel has non-finite values")
        for a in range(dims):
            reach = term.dilation[a] * (kernel.shape[2 + a] - 1)
            if not 0 <= term.pads[a] <= reach:
                raise ValueError("a conv does not keep the image size (pads ≠ d·(k − 1))")
