"""PyTorch's naming conventions for reparametrized weights, in one place.

* Spectral norm, legacy ``torch.nn.utils.spectral_norm``: ``<name>_orig``, ``<name>_u``,
  ``<name>_v`` (version 0 files store the effective ``<name>`` instead of ``_v``).
* Spectral norm, ``torch.nn.utils.parametrizations.spectral_norm``:
  ``parametrizations.<name>.original`` and ``parametrizations.<name>.<i>._u``/``._v``, ``i``
  being spectral norm's place in the parametrization chain.
* Weight norm, legacy ``torch.nn.utils.weight_norm``: ``<name>_g``/``<name>_v``; the
  parametrization: ``parametrizations.<name>.original0``/``original1``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sncli.checkpoint import TensorInfo

#: ``<owner>parametrizations.<param>.<leaf>``; greedy owner: the last ``parametrizations.`` counts.
_PARAMETRIZED = re.compile(r"(?P<owner>.*)parametrizations\.(?P<param>[^.]+)\.(?P<leaf>.+)")
_ORIGINAL = re.compile(r"original\d*")
_SN_U_VECTOR = re.compile(r"\d+\._u")


@dataclass(frozen=True)
class ParametrizedName:
    """A key saved by ``torch.nn.utils.parametrize``, split into its parts."""

    owner: str  # the module's prefix, with its trailing dot ("conv.")
    param: str  # the parametrized attribute ("weight")
    leaf: str  # "original", "original0", "0._u", …

    @property
    def stem(self) -> str:
        """The name of the parametrized tensor as the module exposes it, before any leaf."""
        return f"{self.owner}parametrizations.{self.param}"

    @property
    def is_original(self) -> bool:
        return _ORIGINAL.fullmatch(self.leaf) is not None


def parse_parametrized(name: str) -> ParametrizedName | None:
    match = _PARAMETRIZED.fullmatch(name)
    if match is None:
        return None
    return ParametrizedName(match["owner"], match["param"], match["leaf"])


def baked_name(name: str) -> str:
    """The plain key of a spectrally normalized weight once baked (``conv.weight``)."""
    if name.endswith("_orig"):
        return name[: -len("_orig")]
    parsed = parse_parametrized(name)
    return f"{parsed.owner}{parsed.param}" if parsed and parsed.is_original else name


class SpectralNormStyle(str, Enum):
    LEGACY = "legacy"  # torch.nn.utils.spectral_norm: weight_orig, weight_u, weight_v
    PARAMETRIZATION = "parametrization"  # torch.nn.utils.parametrizations.spectral_norm


@dataclass(frozen=True)
class SpectralNormInfo:
    """Tensors PyTorch's spectral_norm saved next to the raw weight."""

    style: SpectralNormStyle
    u_key: str
    v_key: str | None
    #: The weight the model really uses, when the checkpoint stores it (legacy version 0).
    effective_key: str | None


def spectral_norm_groups(
    names: set[str], derived: Set[str] = frozenset()
) -> dict[str, SpectralNormInfo]:
    """Map raw-weight keys of spectrally normalized layers to their u/v keys.

    Legacy ``spectral_norm`` stores ``<name>_orig``/``_u``/``_v``; the parametrization stores
    ``parametrizations.<name>.original`` and ``parametrizations.<name>.<i>._u``/``._v``, where
    ``i`` is spectral norm's place in the chain. After weight norm (``original0``/``original1``)
    the raw weight is the composed name in ``derived`` (``...parametrizations.<name>``).
    """
    groups: dict[str, SpectralNormInfo] = {}
    stems: set[str] = set()
    for name in names:
        if name.endswith("_orig"):
            base = name[: -len("_orig")]
            if base + "_u" in names:
                v_key = base + "_v" if base + "_v" in names else None
                effective = base if base in names and v_key is None else None
                groups[name] = SpectralNormInfo(
                    SpectralNormStyle.LEGACY, base + "_u", v_key, effective
                )
        parsed = parse_parametrized(name)
        if parsed and (parsed.is_original or _SN_U_VECTOR.fullmatch(parsed.leaf)):
            stems.add(parsed.stem)
    for stem in stems:
        if stem + ".original" in names:
            raw = stem + ".original"
        elif stem in derived:
            raw = stem
        else:
            continue
        for index in range(8):
            u_key, v_key = f"{stem}.{index}._u", f"{stem}.{index}._v"
            if u_key in names and v_key in names:
                groups[raw] = SpectralNormInfo(
                    SpectralNormStyle.PARAMETRIZATION, u_key, v_key, None
                )
                break
    return groups


@dataclass(frozen=True)
class WeightNormPair:
    """A weight stored as weight norm's magnitude g and direction v: W = g · v / ‖v‖.

    ``dim`` is the dimension kept by the norm (``None``: the norm of the whole tensor), as in
    ``torch.nn.utils.weight_norm`` (``weight_g``/``weight_v``) and
    ``torch.nn.utils.parametrizations.weight_norm`` (``original0``/``original1``).
    """

    g_key: str
    v_key: str
    dim: int | None

    def compose(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """W = g · v / ‖v‖ in float64 (the norm over every dimension but ``dim``)."""
        import torch

        v = v.double()
        g = g.double()
        if self.dim is None:
            return v * (g / torch.linalg.vector_norm(v))
        dims = [d for d in range(v.dim()) if d != self.dim]
        return v * (g / torch.linalg.vector_norm(v, dim=dims, keepdim=True))

    def compose_array(self, g: Any, v: Any) -> Any:
        """:meth:`compose` on NumPy arrays (no torch)."""
        import numpy as np

        from sncli.arrays import to_float64

        v = to_float64(v)
        g = to_float64(g)
        if self.dim is None:
            return v * (g / np.sqrt(np.sum(v * v)))
        dims = tuple(d for d in range(v.ndim) if d != self.dim)
        return v * (g / np.sqrt(np.sum(v * v, axis=dims, keepdims=True)))


def weight_norm_dim(g: tuple[int, ...], v: tuple[int, ...]) -> tuple[bool, int | None]:
    """(fits, dim): the ``dim`` weight norm kept, read from g's and v's shapes."""
    if not g:
        return True, None
    if len(g) != len(v):
        return False, None
    kept = [d for d, (a, b) in enumerate(zip(g, v, strict=True)) if a != 1]
    if len(kept) > 1 or any(g[d] != v[d] for d in kept):
        return False, None
    if kept:
        return True, kept[0]
    ones = [d for d, size in enumerate(v) if size == 1]
    return (True, ones[0]) if ones else (False, None)


def weight_norm_pairs(tensors: Mapping[str, TensorInfo]) -> dict[str, WeightNormPair]:
    """Weights stored by weight norm as (g, v), keyed by the name of the composed weight.

    Legacy ``weight_norm`` saves ``<name>_g``/``<name>_v`` (composed name ``<name>``); the
    parametrization saves ``parametrizations.<name>.original0``/``original1`` (composed name
    ``...parametrizations.<name>``: the weight before any later parametrization such as
    spectral norm).
    """
    pairs: dict[str, WeightNormPair] = {}
    for name, info in tensors.items():
        if name.endswith("_g"):
            base = name[:-2]
            v_key = base + "_v"
            if base + "_u" in tensors or base + "_orig" in tensors or base in tensors:
                continue
        else:
            parsed = parse_parametrized(name)
            if parsed is None or parsed.leaf != "original0":
                continue
            base = parsed.stem
            v_key = base + ".original1"
            if base + ".original" in tensors or base + ".original2" in tensors:
                continue
        v = tensors.get(v_key)
        if v is None or base in tensors:
            continue
        fits, dim = weight_norm_dim(info.shape, v.shape)
        if fits:
            pairs[base] = WeightNormPair(name, v_key, dim)
    return pairs
