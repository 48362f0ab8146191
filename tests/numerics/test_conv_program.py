"""Fourier-domain LipSDP over conv programs (sncli.numerics.conv_program): closed forms, the
brute-force Lipschitz constant of tiny ReLU conv nets (all activation patterns of the unrolled
zero-padded convs), the proof's failure below the optimum, and refusals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sncli.numerics.conv_program import (
    Activation,
    ConvProgram,
    ConvTerm,
    _certify,
    _forms,
    _optimize,
    program_bound,
    program_cost,
    torus_size,
)


def dense_conv(term: ConvTerm, size: int) -> np.ndarray:
    """The zero-padded stride-1 1-D conv (out·n × in·n), from its definition
    y[o, i] = Σ_t K[o, c, t]·x[c, i + d·t − p_b] (x = 0 outside [0, n))."""
    kernel = term.kernel
    assert kernel is not None
    out_ch, in_ch, taps = kernel.shape
    mat = np.zeros((out_ch * size, in_ch * size))
    for o, c, t, i in itertools.product(range(out_ch), range(in_ch), range(taps), range(size)):
        j = i + term.dilation[0] * t - term.pads[0]
        if 0 <= j < size:
            mat[o * size + i, c * size + j] += kernel[o, c, t]
    return mat


def brute_force(program: ConvProgram) -> float:
    """max over every 0/β pattern of the activations of ‖J‖₂ for the unrolled program: the
    Jacobian is multi-affine in the patterns, so this is the sup over slopes in [0, β] — which
    every certificate of the module must reach (and which is ≥ the true Lipschitz constant)."""
    n = program.size[0]
    widths = [program.channels] + [a.channels for a in program.activations]
    neurons = [w * n for w in widths[1:]]
    best = 0.0

    def linear(terms, jac: list[np.ndarray]) -> np.ndarray:
        total = 0.0
        for term in terms:
            m = np.eye(widths[term.source] * n) if term.kernel is None else dense_conv(term, n)
            total = total + m @ jac[term.source]
        return total

    for pattern in itertools.product((0.0, 1.0), repeat=sum(neurons)):
        jac = [np.eye(widths[0] * n)]
        at = 0
        for act, count in zip(program.activations, neurons, strict=True):
            d = np.asarray(pattern[at : at + count]) * act.beta
            at += count
            jac.append(d[:, None] * linear(act.terms, jac))
        best = max(best, float(np.linalg.norm(linear(program.output, jac), 2)))
    return best


def circulant_norm(term: ConvTerm, torus: int) -> float:
    """σ of the same conv as a circular conv on the torus (the dense circulant matrix)."""
    kernel = term.kernel
    assert kernel is not None
    out_ch, in_ch, taps = kernel.shape
    mat = np.zeros((out_ch * torus, in_ch * torus))
    for o, c, t, i in itertools.product(range(out_ch), range(in_ch), range(taps), range(torus)):
        j = (i + term.dilation[0] * t - term.pads[0]) % torus
        mat[o * torus + i, c * torus + j] += kernel[o, c, t]
    return float(np.linalg.norm(mat, 2))


def conv(source: int, kernel: np.ndarray, pads: int, dilation: int = 1) -> ConvTerm:
    return ConvTerm(source, kernel, (dilation,), (pads,))


def test_scalar_residual_closed_form() -> None:
    """y = x + b·relu(a·x) on one pixel: L = max(1, |1 + ab|), and LipSDP with one multiplier
    is exact here (one constraint: the S-lemma is lossless)."""
    for a, b in ((1.0, 1.0), (2.0, -0.5), (1.0, -3.0), (0.5, 0.25)):
        program = ConvProgram(
            1,
            (1,),
            (Activation(1, (conv(0, np.array([[[a]]]), 0),)),),
            (ConvTerm(0), conv(1, np.array([[[b]]]), 0)),
        )
        exact = max(1.0, abs(1 + a * b))
        found = program_bound(program, seconds=0.5)
        assert exact <= found.bound <= exact * 1.001, (a, b, found)


def test_chain_closed_form() -> None:
    """A chain conv → relu → conv of 1×1 kernels with one channel: L = |a·b| (one neuron)."""
    program = ConvProgram(
        1,
        (4,),
        (Activation(1, (conv(0, np.array([[[3.0]]]), 0),)),),
        (conv(1, np.array([[[-0.5]]]), 0),),
    )
    assert 1.5 <= program_bound(program, seconds=0.2).bound <= 1.5 * 1.001


@pytest.mark.parametrize("seed", range(6))
def test_brute_force_tiny_residual(seed: int) -> None:
    """Random 1-D residual blocks (asymmetric pads, dilation 2): the certificate is ≥ the
    brute-force sup over activation patterns, and ≤ 1 + σ(A)σ(B) on the same torus (what one
    multiplier reaches, by the S-lemma: z(u − z) ≥ 0 gives |z| ≤ |Au|). On 3 pixels with a
    reach of 4 the torus (the output's ring counts) can be far above the zero-padded value."""
    rng = np.random.default_rng(seed)
    n, hidden = 3, 2
    a = rng.standard_normal((hidden, 1, 3))
    b = rng.standard_normal((1, hidden, 3))
    pads_a, pads_b = (1, 2) if seed % 2 else (0, 1)
    dil = 2 if seed % 3 == 0 else 1
    program = ConvProgram(
        1,
        (n,),
        (Activation(hidden, (conv(0, a, pads_a * dil, dil),)),),
        (ConvTerm(0), conv(1, b, pads_b * dil, dil)),
    )
    exact = brute_force(program)
    found = program_bound(program, seconds=0.5)
    assert found.bound >= exact
    torus = found.torus[0]
    rule = 1 + circulant_norm(program.activations[0].terms[0], torus) * circulant_norm(
        program.output[1], torus
    )
    assert found.bound <= rule * 1.001
    if dil == 1:
        assert found.bound <= 2.0 * exact


@pytest.mark.parametrize("seed", range(4))
def test_brute_force_two_blocks_and_outer_relu(seed: int) -> None:
    """x → relu(C x) → relu(z + B relu(A z)) → output: joint bound ≥ the patterns' sup, and
    below the product of the unrolled layers' norms (what the per-node rule multiplies)."""
    rng = np.random.default_rng(10 + seed)
    n = 3
    stem = rng.standard_normal((1, 1, 3))
    a = rng.standard_normal((1, 1, 3))
    b = rng.standard_normal((1, 1, 3))
    program = ConvProgram(
        1,
        (n,),
        (
            Activation(1, (conv(0, stem, 1),)),
            Activation(1, (conv(1, a, 1),)),
            Activation(1, (ConvTerm(1), conv(2, b, 1)), beta=0.5),
        ),
        (ConvTerm(3),),
    )
    exact = brute_force(program)
    found = program_bound(program, seconds=1.0)
    assert found.bound >= exact
    norms = [circulant_norm(conv(0, k, 1), found.torus[0]) for k in (stem, a, b)]
    rule = norms[0] * (1 + norms[1] * norms[2]) * 0.5
    assert found.bound <= rule * 1.0001


def test_proof_fails_below_the_optimum() -> None:
    """The Cholesky proof is a real check: at ρ² below the brute-force value it fails, at the
    found value (plus margin) it holds."""
    rng = np.random.default_rng(3)
    program = ConvProgram(
        2,
        (4,),
        (Activation(3, (conv(0, rng.standard_normal((3, 2, 3)), 1),)),),
        (ConvTerm(0), conv(1, rng.standard_normal((2, 3, 3)), 1)),
    )
    forms = _forms(program, torus_size(program))
    candidates, values, _, _ = _optimize(forms, 0.5)
    ts, value = candidates[0], values[0]
    assert _certify(forms, ts, value * (1 + 1e-6))
    exact = brute_force(program)
    assert not _certify(forms, ts, exact * exact * 0.999)


def test_torus_holds_the_padding_ring() -> None:
    program = ConvProgram(
        1,
        (8, 6),
        (Activation(2, (ConvTerm(0, np.ones((2, 1, 3, 5)), (1, 2), (2, 3)),)),),
        (ConvTerm(1),),
    )
    # axis 0: reach 2, begin 2 → N = 8 + 2 + 0; axis 1: reach 8, begin 3, end 5 → 6 + 8
    assert torus_size(program) == (10, 14)
    assert program_cost(program) == 10 * 8 * 3**3


def test_refusals() -> None:
    kernel = np.ones((1, 1, 3))
    with pytest.raises(ValueError, match="keep the image size"):
        program_bound(ConvProgram(1, (4,), (Activation(1, (conv(0, kernel, 3),)),), (ConvTerm(1),)))
    with pytest.raises(ValueError, match="earlier value"):
        program_bound(ConvProgram(1, (4,), (Activation(1, (ConvTerm(1),)),), (ConvTerm(1),)))
    with pytest.raises(ValueError, match="at least one activation"):
        program_bound(ConvProgram(1, (4,), (), (ConvTerm(0),)))
    with pytest.raises(ValueError, match="too large"):
        program_bound(
            ConvProgram(
                64,
                (64, 64),
                (Activation(64, (ConvTerm(0, np.ones((64, 64, 3, 3)), (1, 1), (1, 1)),)),),
                (ConvTerm(1),),
            )
        )
