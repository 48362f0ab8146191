"""sncli.parametrizations on keys that real PyTorch modules save: both spectral-norm APIs, both
weight-norm APIs, weight norm followed by spectral norm, nested ``nn.Sequential``. References are
the modules themselves: their state_dict keys without the reparametrization, and their
``.weight``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from sncli.parametrizations import (
    ParametrizedName,
    SpectralNormInfo,
    SpectralNormStyle,
    WeightNormPair,
    baked_name,
    parse_parametrized,
    spectral_norm_groups,
    weight_norm_dim,
    weight_norm_pairs,
)

LEGACY = SpectralNormStyle.LEGACY
PARAMETRIZATION = SpectralNormStyle.PARAMETRIZATION


@dataclass(frozen=True)
class Info:
    """What ``weight_norm_pairs`` reads of a ``TensorInfo``: the shape."""

    shape: tuple[int, ...]


def infos(module: nn.Module) -> dict[str, Info]:
    return {k: Info(tuple(v.shape)) for k, v in module.state_dict().items()}


def legacy_spectral_norm(module: nn.Module, **kwargs: object) -> nn.Module:
    return nn.utils.spectral_norm(module, **kwargs)


def legacy_weight_norm(module: nn.Module, **kwargs: object) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still in old checkpoints
        return nn.utils.weight_norm(module, **kwargs)


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


# --- spectral norm --------------------------------------------------------------------------


def test_legacy_spectral_norm_linear() -> None:
    module = legacy_spectral_norm(nn.Linear(5, 3))
    keys = set(module.state_dict())
    assert keys == {"weight_orig", "weight_u", "weight_v", "bias"}
    assert all(parse_parametrized(k) is None for k in keys)
    assert baked_name("weight_orig") == "weight"
    assert {baked_name(k) for k in keys} >= set(nn.Linear(5, 3).state_dict())
    assert spectral_norm_groups(keys) == {
        "weight_orig": SpectralNormInfo(LEGACY, "weight_u", "weight_v", None)
    }
    assert weight_norm_pairs(infos(module)) == {}


def test_legacy_spectral_norm_version_0_stores_the_effective_weight() -> None:
    # Files from before torch 1.1 (spectral_norm version 0) store <name> instead of <name>_v;
    # torch's load hook still accepts them. The stored <name> is what the model used.
    module = legacy_spectral_norm(nn.Linear(4, 2))
    state = module.state_dict()
    old = {k: v for k, v in state.items() if k != "weight_v"}
    old["weight"] = module.weight.detach().clone()
    assert spectral_norm_groups(set(old)) == {
        "weight_orig": SpectralNormInfo(LEGACY, "weight_u", None, "weight")
    }


def test_legacy_spectral_norm_on_another_parameter() -> None:
    module = legacy_spectral_norm(nn.GRUCell(3, 4), name="weight_hh")
    keys = set(module.state_dict())
    assert spectral_norm_groups(keys) == {
        "weight_hh_orig": SpectralNormInfo(LEGACY, "weight_hh_u", "weight_hh_v", None)
    }
    assert baked_name("weight_hh_orig") == "weight_hh"
    assert {baked_name(k) for k in keys} - {"weight_hh_u", "weight_hh_v"} == set(
        nn.GRUCell(3, 4).state_dict()
    )


def test_parametrized_spectral_norm_conv2d() -> None:
    module = parametrizations.spectral_norm(nn.Conv2d(2, 3, 3))
    keys = set(module.state_dict())
    stem = "parametrizations.weight"
    assert keys == {f"{stem}.original", f"{stem}.0._u", f"{stem}.0._v", "bias"}
    parsed = parse_parametrized(f"{stem}.original")
    assert parsed == ParametrizedName("", "weight", "original")
    assert parsed.stem == stem
    assert parsed.is_original
    u = parse_parametrized(f"{stem}.0._u")
    assert u == ParametrizedName("", "weight", "0._u")
    assert not u.is_original
    assert parse_parametrized("bias") is None
    assert parse_parametrized(stem) is None  # the composed name itself has no leaf
    assert baked_name(f"{stem}.original") == "weight"
    assert baked_name(f"{stem}.0._u") == f"{stem}.0._u"
    assert baked_name("bias") == "bias"
    assert spectral_norm_groups(keys) == {
        f"{stem}.original": SpectralNormInfo(PARAMETRIZATION, f"{stem}.0._u", f"{stem}.0._v", None)
    }
    assert weight_norm_pairs(infos(module)) == {}


def test_parametrized_spectral_norm_on_another_parameter() -> None:
    module = parametrizations.spectral_norm(nn.GRUCell(3, 4), name="weight_hh")
    keys = set(module.state_dict())
    stem = "parametrizations.weight_hh"
    assert baked_name(f"{stem}.original") == "weight_hh"
    assert spectral_norm_groups(keys) == {
        f"{stem}.original": SpectralNormInfo(PARAMETRIZATION, f"{stem}.0._u", f"{stem}.0._v", None)
    }


def nested(sn_legacy: bool) -> nn.Module:
    def wrap(layer: nn.Module, legacy: bool) -> nn.Module:
        return legacy_spectral_norm(layer) if legacy else parametrizations.spectral_norm(layer)

    return nn.Sequential(
        wrap(nn.Conv2d(1, 4, 3), sn_legacy),
        nn.ReLU(),
        nn.Sequential(
            wrap(nn.Conv2d(4, 4, 3), not sn_legacy),
            nn.BatchNorm2d(4),
            nn.Sequential(nn.Flatten(), wrap(nn.Linear(16, 1), sn_legacy)),
        ),
    )


def plain() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Sequential(
            nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
        ),
    )


@pytest.mark.parametrize("sn_legacy", [True, False])
def test_nested_sequential_mixing_both_styles(sn_legacy: bool) -> None:
    keys = set(nested(sn_legacy).state_dict())
    groups = spectral_norm_groups(keys)
    expected = {}
    for owner, legacy in (("0.", sn_legacy), ("2.0.", not sn_legacy), ("2.2.1.", sn_legacy)):
        if legacy:
            expected[f"{owner}weight_orig"] = SpectralNormInfo(
                LEGACY, f"{owner}weight_u", f"{owner}weight_v", None
            )
        else:
            stem = f"{owner}parametrizations.weight"
            expected[f"{stem}.original"] = SpectralNormInfo(
                PARAMETRIZATION, f"{stem}.0._u", f"{stem}.0._v", None
            )
    assert groups == expected
    for raw in groups:
        assert parse_parametrized(raw) is None or parse_parametrized(raw).owner in {
            "0.",
            "2.0.",
            "2.2.1.",
        }
    # Baking every raw weight and dropping u/v gives exactly the plain model's keys.
    uv = {k for info in groups.values() for k in (info.u_key, info.v_key)}
    assert {baked_name(k) for k in keys - uv} == set(plain().state_dict())


# --- weight norm ----------------------------------------------------------------------------


def refresh_legacy_weight(module: nn.Module) -> None:
    """Run legacy weight norm's pre-forward hook, which recomputes ``module.weight``."""
    for hook in list(module._forward_pre_hooks.values()):
        hook(module, ())


LAYERS = {
    "linear": lambda: nn.Linear(5, 4),
    "linear_1_out": lambda: nn.Linear(5, 1),
    "linear_1_in": lambda: nn.Linear(1, 4),
    "conv1d": lambda: nn.Conv1d(3, 2, 5),
    "conv2d": lambda: nn.Conv2d(3, 4, (2, 3)),
    "conv2d_1x1": lambda: nn.Conv2d(1, 4, 1),
}
DIMS = [0, 1, None]


def randomize_magnitude(g: torch.Tensor) -> None:
    # Right after weight_norm, g = ‖v‖ and the composed weight is v itself whatever dim is:
    # a random g makes the test see which norm was taken.
    with torch.no_grad():
        g.copy_(torch.rand_like(g) + 0.5)


def check_dim(pair: WeightNormPair, g_shape: tuple[int, ...], dim: int | None) -> None:
    if any(size != 1 for size in g_shape):
        assert pair.dim == dim  # unambiguous: g keeps exactly dimension ``dim``
    elif dim is None:
        assert pair.dim is None


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_legacy_weight_norm_pair_composes_the_modules_weight(layer: str, dim: int | None) -> None:
    module = legacy_weight_norm(LAYERS[layer]().double(), dim=dim)
    randomize_magnitude(module.weight_g)
    refresh_legacy_weight(module)
    shapes = infos(module)
    pairs = weight_norm_pairs(shapes)
    assert set(pairs) == {"weight"}
    pair = pairs["weight"]
    assert (pair.g_key, pair.v_key) == ("weight_g", "weight_v")
    check_dim(pair, shapes["weight_g"].shape, dim)
    composed = pair.compose(module.weight_g.detach(), module.weight_v.detach())
    assert composed.dtype == torch.float64
    torch.testing.assert_close(composed, module.weight.detach(), rtol=0, atol=1e-12)
    assert spectral_norm_groups(set(shapes)) == {}


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_parametrized_weight_norm_pair_composes_the_modules_weight(
    layer: str, dim: int | None
) -> None:
    module = parametrizations.weight_norm(LAYERS[layer]().double(), dim=dim)
    randomize_magnitude(module.parametrizations.weight.original0)
    shapes = infos(module)
    stem = "parametrizations.weight"
    pairs = weight_norm_pairs(shapes)
    assert set(pairs) == {stem}
    pair = pairs[stem]
    assert (pair.g_key, pair.v_key) == (f"{stem}.original0", f"{stem}.original1")
    check_dim(pair, shapes[f"{stem}.original0"].shape, dim)
    state = module.state_dict()
    composed = pair.compose(state[pair.g_key], state[pair.v_key])
    torch.testing.assert_close(composed, module.weight.detach(), rtol=0, atol=1e-12)
    assert baked_name(f"{stem}.original0") == "weight"
    assert spectral_norm_groups(set(shapes)) == {}


def test_compose_upcasts_float32_inputs() -> None:
    module = parametrizations.weight_norm(nn.Linear(6, 3))
    state = module.state_dict()
    pair = weight_norm_pairs(infos(module))["parametrizations.weight"]
    composed = pair.compose(state[pair.g_key], state[pair.v_key])
    assert composed.dtype == torch.float64
    reference = torch._weight_norm(state[pair.v_key].double(), state[pair.g_key].double(), 0)
    torch.testing.assert_close(composed, reference, rtol=0, atol=1e-15)


def test_weight_norm_then_spectral_norm() -> None:
    module = parametrizations.weight_norm(nn.Linear(5, 4).double())
    module = parametrizations.spectral_norm(module)
    randomize_magnitude(module.parametrizations.weight.original0)
    module.eval()  # no power iteration: the weight is W / (uᵀ W v) with the stored u, v
    state = module.state_dict()
    stem = "parametrizations.weight"
    assert set(state) == {
        f"{stem}.original0",
        f"{stem}.original1",
        f"{stem}.1._u",
        f"{stem}.1._v",
        "bias",
    }
    pairs = weight_norm_pairs(infos(module))
    assert set(pairs) == {stem}
    assert spectral_norm_groups(set(state)) == {}  # the raw weight is derived, not stored
    assert spectral_norm_groups(set(state), derived=set(pairs)) == {
        stem: SpectralNormInfo(PARAMETRIZATION, f"{stem}.1._u", f"{stem}.1._v", None)
    }
    pair = pairs[stem]
    composed = pair.compose(state[pair.g_key], state[pair.v_key])
    weight_norm_only = module.parametrizations.weight[0]
    reference = weight_norm_only(state[pair.g_key], state[pair.v_key]).detach()
    torch.testing.assert_close(composed, reference, rtol=0, atol=1e-12)
    # And what the module really uses: the composed weight over its spectral-norm estimate.
    u, v = state[f"{stem}.1._u"], state[f"{stem}.1._v"]
    sigma = torch.dot(u, composed @ v)
    torch.testing.assert_close(composed / sigma, module.weight.detach(), rtol=0, atol=1e-12)


def test_weight_norm_in_nested_sequential() -> None:
    model = nn.Sequential(
        legacy_weight_norm(nn.Linear(3, 4)),
        nn.Sequential(parametrizations.weight_norm(nn.Conv1d(4, 2, 1), dim=1)),
    )
    pairs = weight_norm_pairs(infos(model))
    assert pairs == {
        "0.weight": WeightNormPair("0.weight_g", "0.weight_v", 0),
        "1.0.parametrizations.weight": WeightNormPair(
            "1.0.parametrizations.weight.original0", "1.0.parametrizations.weight.original1", 1
        ),
    }


def test_plain_models_have_no_reparametrizations() -> None:
    model = nn.Sequential(plain(), nn.LayerNorm(3), nn.Embedding(5, 3), nn.GRU(3, 3))
    shapes = infos(model)
    assert spectral_norm_groups(set(shapes)) == {}
    assert weight_norm_pairs(shapes) == {}
    assert all(parse_parametrized(k) is None for k in shapes)
    assert all(baked_name(k) == k for k in shapes)


def test_legacy_names_that_are_not_weight_norm() -> None:
    # A _g next to legacy spectral norm's keys, or next to a stored composed weight, is not g.
    assert weight_norm_pairs({"w_g": Info((4, 1)), "w_v": Info((4, 5)), "w": Info((4, 5))}) == {}
    assert weight_norm_pairs({"w_g": Info((4, 1)), "w_v": Info((4, 5)), "w_u": Info((4,))}) == {}
    assert weight_norm_pairs({"w_g": Info((3, 1)), "w_v": Info((4, 5))}) == {}  # shapes clash
    assert weight_norm_pairs({"w_g": Info((4, 1))}) == {}  # no v


@pytest.mark.parametrize(
    ("g", "v", "expected"),
    [
        ((), (4, 5), (True, None)),
        ((4, 1), (4, 5), (True, 0)),
        ((1, 5), (4, 5), (True, 1)),
        ((1, 1, 2, 1), (4, 3, 2, 3), (True, 2)),
        ((1, 1), (1, 5), (True, 0)),
        ((1, 1), (4, 1), (True, 1)),
        ((4, 5), (4, 5), (False, None)),
        ((3, 1), (4, 5), (False, None)),
        ((4,), (4, 5), (False, None)),
        ((1, 1), (2, 2), (False, None)),
    ],
)
def test_weight_norm_dim(g: tuple[int, ...], v: tuple[int, ...], expected: tuple) -> None:
    assert weight_norm_dim(g, v) == expected


@pytest.mark.parametrize(
    ("shape", "dim"), [((4, 5), 0), ((4, 5), 1), ((4, 3, 2, 3), 2), ((4, 3, 2, 3), 3)]
)
def test_weight_norm_dim_reads_torchs_own_g(shape: tuple[int, ...], dim: int) -> None:
    # torch.norm_except_dim gives g exactly as weight norm stores it.
    v = torch.randn(shape, dtype=torch.float64)
    g = torch.norm_except_dim(v, 2, dim)
    assert weight_norm_dim(tuple(g.shape), shape) == (True, dim)
