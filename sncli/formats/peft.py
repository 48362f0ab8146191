"""Recognise LoRA adapters: a PEFT adapter folder, or a kohya/diffusers LoRA file.

A LoRA adapter stores, per adapted module, two factors A (r × n) and B (m × r) and a scale s;
the module's weight becomes W + s·B·A. Read as a plain checkpoint, A and B look like unrelated
linear layers and s is lost. This reader finds the factor pairs in the tensor names and the
scale in the adapter's own metadata, and checks that the two agree:

* PEFT (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``): keys
  ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` (embeddings:
  ``lora_embedding_A`` / ``lora_embedding_B``, stored transposed); r and α come from ``r``,
  ``lora_alpha``, ``rank_pattern`` and ``alpha_pattern`` (matched as PEFT 0.22 matches them:
  the pattern is a regex that must match the end of the module path on a dot boundary);
  s = α/r, or α/√r with ``use_rslora``. DoRA's ``lora_magnitude_vector`` (m per output row)
  is recorded on the module: it rescales the rows of W + s·B·A, so it means something only
  with the base weight (``--base``).
* kohya / diffusers (one file): ``<module>.lora_down.weight`` (A), ``<module>.lora_up.weight``
  (B) and an optional scalar ``<module>.alpha``: s = alpha/r, and s = 1 without alpha (kohya's
  default alpha is r); diffusers' older ``<module>.lora.down.weight`` / ``lora.up.weight`` too.
  Conv LoRA: A is (r, in, k…), B is (out, r, 1…); ΔW is B·A reshaped to (out, in, k…).

Everything that disagrees (a config r that is not the tensors' rank, an A without its B, a
missing config) is a ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sncli.errors import CheckpointError
from sncli.formats.common import quote, show_value, strict_json_loads

CONFIG_NAME = "adapter_config.json"
#: What a PEFT adapter's weights file is called (safetensors first, as PEFT loads them).
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
#: The prefix PEFT puts before the base model's own module path.
PEFT_PREFIX = "base_model.model."
#: The largest adapter_config.json read (a config is a few kB).
_CONFIG_LIMIT = 4 * 1024 * 1024

_PEFT_FACTOR = re.compile(r"(?P<module>.+)\.lora_(?P<side>A|B)\.weight")
_PEFT_EMBEDDING = re.compile(r"(?P<module>.+)\.lora_embedding_(?P<side>A|B)")
_PEFT_MAGNITUDE = re.compile(r"(?P<module>.+)\.lora_magnitude_vector(\.weight)?")
_PEFT_BIAS = re.compile(r"(?P<module>.+)\.lora_B\.bias")
_KOHYA_FACTOR = re.compile(
    r"(?P<module>.+)\.(lora_(?P<side>down|up)|lora\.(?P<side2>down|up))\.weight"
)
_KOHYA_ALPHA = re.compile(r"(?P<module>.+)\.alpha")


@dataclass(frozen=True)
class AdaptedModule:
    """One adapted module: its factors' keys, rank r, scale s and the shape of its update.

    ``out_features`` is m and ``in_shape`` the rest of the base weight's shape ((n,) for a linear
    map, (in, k…) for a convolution): ΔW = s·B·A reshaped to (m, *in_shape). ``transposed``: the
    base weight is stored as ΔWᵀ's shape (PEFT embeddings, ``fan_in_fan_out`` Conv1D layers).
    """

    name: str
    a_key: str
    b_key: str
    rank: int
    alpha: float
    scale: float
    out_features: int
    in_shape: tuple[int, ...]
    dtype: str
    transposed: bool = False
    magnitude_key: str | None = None

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.out_features, math.prod(self.in_shape)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape of the base weight this module adapts."""
        if self.transposed:
            return self.matrix_shape[1], self.matrix_shape[0]
        return (self.out_features, *self.in_shape)


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter: where it is, its config, its adapted modules and what else it holds.

    ``roles`` names every tensor that belongs to a module (factors, alpha, magnitude) with what
    it is; ``others`` the tensors that are not LoRA factors (``modules_to_save`` copies, LoRA
    biases), with the reason they are not analysed.
    """

    format: str  # "peft" or "kohya"
    weights: Path
    config_path: Path | None
    config: Mapping[str, Any]
    modules: tuple[AdaptedModule, ...]
    roles: Mapping[str, str]
    others: Mapping[str, str]
    notes: tuple[str, ...] = ()

    @property
    def dora(self) -> bool:
        return any(module.magnitude_key is not None for module in self.modules)


def looks_like_adapter(names: list[str]) -> str | None:
    """'peft' or 'kohya' when the tensor names hold LoRA factors, else None."""
    for name in names:
        if _PEFT_FACTOR.fullmatch(name) or _PEFT_EMBEDDING.fullmatch(name):
            return "peft"
        if _KOHYA_FACTOR.fullmatch(name):
            return "kohya"
    return None


def read_adapter(
    weights: Path,
    tensors: Mapping[str, tuple[tuple[int, ...], str]],
    scalar: Callable[[str], float],
) -> Adapter | None:
    """The adapter in ``weights`` (tensor name → (shape, dtype)), or None when it holds no LoRA
    factors. ``scalar(name)`` reads a one-element tensor (kohya's alpha). Raises
    ``CheckpointError`` when factors, config and scale disagree."""
    kind = looks_like_adapter(list(tensors))
    if kind == "peft":
        return _read_peft(weights, tensors)
    if kind == "kohya":
        return _read_kohya(weights, tensors, scalar)
    return None


def _read_config(weights: Path) -> tuple[Path, dict[str, Any]]:
    config_path = weights.parent / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(
            f"holds PEFT LoRA factors (lora_A/lora_B) but no {CONFIG_NAME} beside it: its "
            "rank and scale α/r are unknown; put the adapter's config next to it",
            weights,
        )
    try:
        with config_path.open("rb") as handle:
            raw = handle.read(_CONFIG_LIMIT + 1)
        if len(raw) > _CONFIG_LIMIT:
            raise CheckpointError("is larger than an adapter config can be (4 MiB)", config_path)
        config = strict_json_loads(raw.decode("utf-8"))
    except CheckpointError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"is not valid JSON: {_reason(exc)}", config_path) from exc
    if not isinstance(config, dict):
        raise CheckpointError("is not a JSON object", config_path)
    return config_path, config


def _reason(exc: BaseException) -> str:
    from sncli.formats.common import describe

    return describe(exc)


def _number(config: Mapping[str, Any], key: str, path: Path, *, positive: bool = True) -> float:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"'{key}' is {show_value(value)}, not a number", path)
    if positive and value <= 0:
        raise CheckpointError(f"'{key}' is {show_value(value)}, not positive", path)
    return float(value)


def _patterns(config: Mapping[str, Any], key: str, path: Path) -> dict[str, float]:
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise CheckpointError(f"'{key}' is {show_value(value)}, not an object", path)
    result = {}
    for pattern in value:
        result[pattern] = _number(value, pattern, path)
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CheckpointError(
                f"'{key}' holds an invalid pattern {quote(pattern)}", path
            ) from exc
    return result


def pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    """PEFT's ``get_pattern_key``: the first pattern whose regex matches the module path's end
    on a dot boundary (``(.*\\.)?(pattern)$``) gives the value; else ``default``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _pairs(
    tensors: Mapping[str, tuple[tuple[int, ...], str]],
    weights: Path,
    patterns: list[re.Pattern[str]],
) -> dict[str, dict[str, str]]:
    """module → {"A": key, "B": key}, refusing a module with one factor only."""
    found: dict[str, dict[str, str]] = {}
    for name in tensors:
        for pattern in patterns:
            match = pattern.fullmatch(name)
            if match:
                side = match.group("side") or match.groupdict().get("side2")
                side = {"down": "A", "up": "B"}.get(side, side)
                found.setdefault(match.group("module"), {})[side] = name
                break
    for module, sides in found.items():
        if len(sides) == 1:
            ((side, key),) = sides.items()
            other = "B" if side == "A" else "A"
            raise CheckpointError(
                f"LoRA factor {quote(key)} has no {other} factor beside it "
                f"(module {quote(module)})",
                weights,
            )
    return found


def _check_shapes(
    module: str,
    a_key: str,
    b_key: str,
    tensors: Mapping[str, tuple[tuple[int, ...], str]],
    weights: Path,
    embedding: bool,
) -> tuple[int, int, tuple[int, ...]]:
    """(r, m, in_shape) from the factors' shapes, refusing shapes that do not chain."""
    a_shape, b_shape = tensors[a_key][0], tensors[b_key][0]
    if embedding:  # PEFT's embedding factors: A (r, num_embeddings), B (embedding_dim, r)
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise CheckpointError(
                f"LoRA factors of {quote(module)} do not chain: A {list(a_shape)}, "
                f"B {list(b_shape)}",
                weights,
            )
        return a_shape[0], b_shape[0], (a_shape[1],)
    chain = (
        len(a_shape) >= 2
        and len(b_shape) == len(a_shape)
        and b_shape[1] == a_shape[0]
        and all(d == 1 for d in b_shape[2:])
    )
    if not chain:
        raise CheckpointError(
            f"LoRA factors of {quote(module)} do not chain into B·A: A {list(a_shape)}, "
            f"B {list(b_shape)}",
            weights,
        )
    if any(d == 0 for d in (*a_shape, *b_shape)):
        raise CheckpointError(f"LoRA factors of {quote(module)} are empty", weights)
    return a_shape[0], b_shape[0], tuple(a_shape[1:])


def _read_peft(weights: Path, tensors: Mapping[str, tuple[tuple[int, ...], str]]) -> Adapter:
    config_path, config = _read_config(weights)
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise CheckpointError(
            f"'peft_type' is {show_value(peft_type)}: only LoRA adapters are read", config_path
        )
    r_default = _number(config, "r", config_path)
    alpha_default = _number(config, "lora_alpha", config_path)
    rank_pattern = _patterns(config, "rank_pattern", config_path)
    alpha_pattern = _patterns(config, "alpha_pattern", config_path)
    rslora = config.get("use_rslora") is True
    transposed_all = config.get("fan_in_fan_out") is True
    pairs = _pairs(tensors, weights, [_PEFT_FACTOR, _PEFT_EMBEDDING])
    magnitudes = {
        m.group("module"): name
        for name in tensors
        if (m := _PEFT_MAGNITUDE.fullmatch(name)) is not None
    }
    roles: dict[str, str] = {}
    modules = []
    for module, sides in pairs.items():
        path = module.removeprefix(PEFT_PREFIX)
        embedding = _PEFT_EMBEDDING.fullmatch(sides["A"]) is not None
        rank, out, in_shape = _check_shapes(
            module, sides["A"], sides["B"], tensors, weights, embedding
        )
        expected = pattern_value(rank_pattern, path, r_default)
        if rank != expected:
            raise CheckpointError(
                f"the LoRA factors of {quote(path)} have rank {rank} but {CONFIG_NAME} says "
                f"r = {expected:g}" + (" (rank_pattern)" if expected != r_default else ""),
                weights,
            )
        alpha = pattern_value(alpha_pattern, path, alpha_default)
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        magnitude = magnitudes.get(module)
        if magnitude is not None and math.prod(tensors[magnitude][0]) != out:
            raise CheckpointError(
                f"DoRA magnitude {quote(magnitude)} has {math.prod(tensors[magnitude][0])} "
                f"entries, but the module has {out} output rows",
                weights,
            )
        dtype = tensors[sides["B"]][1]
        modules.append(
            AdaptedModule(
                name=path,
                a_key=sides["A"],
                b_key=sides["B"],
                rank=rank,
                alpha=alpha,
                scale=scale,
                out_features=out,
                in_shape=in_shape,
                dtype=dtype,
                transposed=embedding or transposed_all,
                magnitude_key=magnitude,
            )
        )
        roles[sides["A"]] = f"LoRA factor A of {path} (analysed as the update s·B·A)"
        roles[sides["B"]] = f"LoRA factor B of {path} (analysed as the update s·B·A)"
        if magnitude is not None:
            roles[magnitude] = f"DoRA magnitude vector of {path} (used with --base)"
    others = {}
    for name in tensors:
        if name in roles:
            continue
        if _PEFT_BIAS.fullmatch(name):
            others[name] = "LoRA bias (lora_B.bias): it changes the bias, not the matrix"
        elif _PEFT_MAGNITUDE.fullmatch(name):
            others[name] = "DoRA magnitude vector without LoRA factors"
        else:
            others[name] = "not a LoRA factor (a modules_to_save copy or trainable tokens)"
    notes = []
    if any(m.magnitude_key for m in modules):
        notes.append(
            "DoRA adapter: σ is of the LoRA update s·B·A; the magnitude vector rescales the "
            "rows of W + s·B·A, so the merged weight needs the base model (--base)"
        )
    return Adapter(
        "peft", weights, config_path, config, tuple(modules), roles, others, tuple(notes)
    )


def _read_kohya(
    weights: Path,
    tensors: Mapping[str, tuple[tuple[int, ...], str]],
    scalar: Callable[[str], float],
) -> Adapter:
    pairs = _pairs(tensors, weights, [_KOHYA_FACTOR])
    roles: dict[str, str] = {}
    modules = []
    for module, sides in pairs.items():
        rank, out, in_shape = _check_shapes(
            module, sides["A"], sides["B"], tensors, weights, embedding=False
        )
        alpha_key = f"{module}.alpha"
        alpha = float(rank)
        if alpha_key in tensors:
            shape = tensors[alpha_key][0]
            if math.prod(shape) != 1:
                raise CheckpointError(
                    f"{quote(alpha_key)} has shape {list(shape)}, not one number", weights
                )
            alpha = scalar(alpha_key)
            if not math.isfinite(alpha):
                raise CheckpointError(f"{quote(alpha_key)} is {alpha}, not a number", weights)
            roles[alpha_key] = f"LoRA alpha of {module}"
        modules.append(
            AdaptedModule(
                name=module,
                a_key=sides["A"],
                b_key=sides["B"],
                rank=rank,
                alpha=alpha,
                scale=alpha / rank,
                out_features=out,
                in_shape=in_shape,
                dtype=tensors[sides["B"]][1],
            )
        )
        roles[sides["A"]] = f"LoRA factor down (A) of {module} (analysed as the update s·B·A)"
        roles[sides["B"]] = f"LoRA factor up (B) of {module} (analysed as the update s·B·A)"
    others = {name: "not a LoRA factor" for name in tensors if name not in roles}
    return Adapter("kohya", weights, None, {}, tuple(modules), roles, others)
