"""What a loaded PyTorch object wraps: pickled modules, wrapper dicts (Lightning, timm EMA, …),
nested dicts of tensors and the DataParallel / torch.compile key prefixes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sncli.errors import CheckpointError
from sncli.formats.common import shown_names
from sncli.messages import clean_text

#: Wrapper keys tried in this order when a PyTorch file holds more than a bare state dict.
#: The raw weights come first (``state_dict``, ``model``, ``module``), then EMA copies
#: (timm's ``model_ema``/``state_dict_ema``, ``ema``), then ``net``. Unlike timm, which prefers
#: EMA weights, sncli reports the weights training produced unless ``--key`` says otherwise;
#: the note on stderr names the key used and the other candidates.
WRAPPER_KEYS = ("state_dict", "model", "module", "model_ema", "state_dict_ema", "ema", "net")


#: Prefixes removed from display names when every key carries them (DataParallel, torch.compile).
STRIPPABLE_PREFIXES = ("module.", "_orig_mod.")


def is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _tensor_count(value: Any) -> int:
    if not isinstance(value, Mapping):
        return 0
    return sum(1 for v in value.values() if is_tensor(v))


def module_state(value: Any, prefix: str = "", depth: int = 0) -> dict[str, Any] | None:
    """The state dict of a pickled ``nn.Module`` read with --skip-objects, or None.

    Such a module arrives as an inert placeholder whose attributes hold ``_parameters``,
    ``_buffers`` and ``_modules``; parameters and persistent buffers are collected recursively.
    """
    attrs = getattr(value, "__dict__", None)
    if not isinstance(attrs, dict) or not isinstance(attrs.get("_parameters"), Mapping):
        return None
    state: dict[str, Any] = {}
    skip = attrs.get("_non_persistent_buffers_set") or ()
    for group in ("_parameters", "_buffers"):
        items = attrs.get(group)
        if isinstance(items, Mapping):
            for name, tensor in items.items():
                if tensor is not None and not (group == "_buffers" and name in skip):
                    state[f"{prefix}{name}"] = tensor
    children = attrs.get("_modules")
    if isinstance(children, Mapping) and depth < 100:
        for name, child in children.items():
            sub = module_state(child, f"{prefix}{name}.", depth + 1)
            if sub:
                state.update(sub)
    return state


def unwrap_modules(obj: Any) -> Any:
    """Replace pickled modules (top level or one level down) by their state dicts."""
    state = module_state(obj)
    if state is not None:
        return state
    if isinstance(obj, Mapping) and any(module_state(v) is not None for v in obj.values()):
        return {k: (module_state(v) if module_state(v) is not None else v) for k, v in obj.items()}
    return obj


def _nested_candidates(obj: Any, path: str = "", depth: int = 0) -> list[str]:
    """Keys (joined with '/') of dicts of tensors nested up to three levels down."""
    found: list[str] = []
    if not isinstance(obj, Mapping) or depth > 3:
        return found
    for key, value in obj.items():
        if not isinstance(key, str) or "/" in key:
            continue
        here = f"{path}{key}"
        if _tensor_count(value) > 0:
            found.append(here)
        elif isinstance(value, Mapping):
            found += _nested_candidates(value, here + "/", depth + 1)
        if len(found) > 8:
            break
    return found


def _deep_candidate(obj: Any, limit: int = 10_000) -> str | None:
    """The first dict of tensors at any depth (breadth first, a bounded number of dicts)."""
    queue: list[tuple[str, Any]] = [("", obj)]
    seen = 0
    while queue and seen < limit:
        here, node = queue.pop(0)
        seen += 1
        if here and _tensor_count(node) > 0:
            return here
        if isinstance(node, Mapping):
            queue += [
                (f"{here}/{k}" if here else k, v)
                for k, v in node.items()
                if isinstance(k, str) and "/" not in k and isinstance(v, Mapping)
            ]
    return None


def choose_state_dict(obj: Any, key: str | None, path: Path) -> tuple[str | None, list[str]]:
    """Pick the state dict inside a loaded object; return (wrapper key or None, notes)."""
    obj = unwrap_modules(obj)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"not a state dict: the file holds a {type(obj).__name__}, not a dict of tensors", path
        )
    if key is not None:
        navigate(obj, key, path)
        return key, [f"using the state dict under key '{clean_text(key)}'"]
    candidates = [k for k in WRAPPER_KEYS if _tensor_count(obj.get(k)) > 0]
    if not candidates and _tensor_count(obj) == 0:
        candidates = _nested_candidates(obj)
        if len(candidates) > 1:
            raise CheckpointError(
                "holds several dicts of tensors (" + shown_names(candidates, 8) + "); "
                "choose one with --key",
                path,
            )
    if not candidates:
        if _tensor_count(obj) == 0:
            deeper = _deep_candidate(obj)
            if deeper is not None:
                raise CheckpointError(
                    f"holds no dict of tensors in its top 4 levels; one lies deeper, under "
                    f"'{clean_text(deeper)}': pick it with --key '{clean_text(deeper)}'",
                    path,
                )
            raise CheckpointError("holds no tensors", path)
        return None, []
    chosen = candidates[0]
    note = f"using the state dict under key '{clean_text(chosen)}'"
    others = candidates[1:]
    if others:
        note += f" (also present: {shown_names(others)}; pick with --key)"
    return chosen, [note]


def navigate(obj: Any, key: str | None, path: Path) -> Mapping[str, Any]:
    if key is None:
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"not a state dict: holds a {type(obj).__name__}", path)
        return obj
    node = obj
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            available = shown_names([str(k) for k in obj], 12) if isinstance(obj, Mapping) else ""
            plain = "it is a plain state dict, not a wrapper; " if _tensor_count(obj) else ""
            raise CheckpointError(
                f"has no key '{clean_text(key)}' ({plain}top-level keys: {available})", path
            )
        node = node[part]
    if _tensor_count(node) == 0:
        raise CheckpointError(f"key '{clean_text(key)}' does not hold a dict of tensors", path)
    return node


def common_prefix(names: list[str]) -> str:
    prefix = ""
    changed = True
    while changed and names:
        changed = False
        for candidate in STRIPPABLE_PREFIXES:
            if all(n.startswith(prefix + candidate) for n in names):
                prefix += candidate
                changed = True
    return prefix
