"""``sncli diff`` (and ``track --delta``, and a GGUF file against its source) on safetensors,
sharded and folder checkpoints, NumPy, Keras, ONNX and GGUF files never imports torch, and gives
the numbers torch's kernels give (issue 26); ``--device cuda`` runs torch's kernels, and falls
back to the CPU with a note.

Each case runs ``sncli`` in a subprocess in which torch cannot be imported (a meta-path finder
raises ImportError for ``torch`` and ``torch.*``, as in tests/test_torch_free.py), and the same
command in this process with the checkpoints read as torch tensors (``Checkpoint.numpy_native``
patched to False, NumPy's σ kernels made to fail), so torch's σ kernels run: the reference.
Every JSON value is compared:

* strings, booleans, integers and lists of them exactly: names, dtypes, ``unchanged``, which
  layers are only in A or B, ``outside_top_subspace`` and the intruder indices. The top
  subspaces (cosines, their error, the intruders, σ from their Ritz values) are NumPy's in both
  runs, on the same float64 matrices (the upcast of bf16/fp16/fp32 to float64 is exact), so
  they agree to the bit, except on a weight-norm layer, whose W = g·v/‖v‖ torch composes in
  one run and NumPy in the other (float64 rounding, ~1e-16 relative: its cosines moved by
  2.3e-15, their error by 2.2e-14). Cosines are compared to 1e-12 absolute; their stated
  error, a rounding-sized residual over a gap, to 1e-9 absolute (as tests/test_golden.py);
* float64 results (exact and dense σ, ``-m exact`` Lanczos to 1e-12 relative, certified upper
  bounds) to 1e-11 relative, as tests/test_torch_free.py allows for the same LAPACK algorithms on
  another library (NumPy's OpenBLAS against torch's MKL; measured ≤ 8.4e-16);
* iterative σ (``auto``'s float32 block Lanczos, a lower bound) to 1e-6 relative: both runs
  start from the same random block (:func:`sncli.arrays.torch_randn`) and differ only by the
  rounding of float32 products (measured ≤ 4.1e-10 here; the method's own target is 1e-4).
  ``relative`` = ‖B−A‖₂/σ(A) adds the errors of both;
* Frobenius distances are float64 sums in another order: 1e-12 relative (measured ≤ 3.1e-14);
* ``sigma_drift`` = (σ(B) − σ(A))/σ(A) is a difference of two such σ: 3e-6 absolute.
"""

from __future__ import annotations

import io
import json
import math
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from sncli.checkpoint import Checkpoint
from sncli.cli import app
from tests import no_torch
from tests.test_torch_free import _forbid_numpy_kernels

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "formats" / "data"

#: Runs ``python -m sncli ARGS`` with torch unimportable.
NO_TORCH = no_torch.NO_TORCH

DIFF = ("diff", "--format", "json")


def _normal(rng: np.random.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape) * rng.uniform(0.05, 3.0)).to(dtype)


def _moved(rng: np.random.Generator, weight: torch.Tensor, size: float) -> torch.Tensor:
    """``weight`` plus a rank-2 update and noise, ``size`` of its scale (in its dtype)."""
    w = weight.double()
    matrix = w.reshape(w.shape[0], -1)
    u = torch.from_numpy(rng.standard_normal((matrix.shape[0], 2)))
    v = torch.from_numpy(rng.standard_normal((2, matrix.shape[1])))
    noise = torch.from_numpy(rng.standard_normal(matrix.shape))
    scale = float(matrix.abs().max())
    moved = matrix + size * scale * (u @ v / math.sqrt(matrix.numel()) * 4 + 0.01 * noise)
    return moved.reshape(w.shape).to(weight.dtype)


def _state(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Layers on every route: iterated subspaces (smaller side 270 > 256), dense ones, bf16 and
    fp16 upcasts, float64, a conv, a weight-norm pair."""
    return {
        "big.weight": _normal(rng, 300, 270, dtype=torch.float32),
        "wide.weight": _normal(rng, 140, 400, dtype=torch.bfloat16),
        "half.weight": _normal(rng, 160, 150, dtype=torch.float16),
        "small.weight": _normal(rng, 24, 40, dtype=torch.float64),
        "small.bias": _normal(rng, 24, dtype=torch.float32),
        "same.weight": _normal(rng, 48, 64, dtype=torch.float32),
        "conv.weight": _normal(rng, 16, 8, 3, 3, dtype=torch.float32),
        "wn.weight_g": _normal(rng, 32, 1, dtype=torch.float32).abs(),
        "wn.weight_v": _normal(rng, 32, 48, dtype=torch.float32),
        "retyped.weight": _normal(rng, 20, 30, dtype=torch.float32),
        "gone.weight": _normal(rng, 12, 10, dtype=torch.float32),
        "bad.weight": _normal(rng, 16, 24, dtype=torch.bfloat16),
    }


def _tuned(rng: np.random.Generator, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tuned = {}
    for index, (name, tensor) in enumerate(base.items()):
        if name in ("same.weight", "small.bias"):
            tuned[name] = tensor.clone()
        elif tensor.dim() >= 2:
            tuned[name] = _moved(rng, tensor, 0.02 * (index + 1))
    tuned["retyped.weight"] = tuned["retyped.weight"].to(torch.float16)  # compared, listed
    del tuned["gone.weight"]
    tuned["bad.weight"][3, 5], tuned["bad.weight"][7, 1] = math.nan, -math.inf  # not compared
    tuned["new.weight"] = _normal(rng, 12, 10, dtype=torch.float32)
    return tuned


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _shard(tensors: dict[str, torch.Tensor], folder: Path) -> Path:
    folder.mkdir()
    names = sorted(tensors)
    weight_map = {}
    for index, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{index + 1}-of-00002.safetensors"
        _save({k: tensors[k] for k in part}, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    index_path = folder / "model.safetensors.index.json"
    index_path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index_path


def _keras_moved(source: Path, path: Path, rng: np.random.Generator) -> Path:
    """A copy of a Keras v3 file with every layer's kernel moved (h5py, no Keras)."""
    import h5py

    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as weights:
        for layer in weights["layers"].values():
            if "vars" in layer and "0" in layer["vars"]:
                kernel = layer["vars"]["0"]
                kernel[...] = kernel[...] * (1 + 0.05 * rng.standard_normal(kernel.shape))
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _onnx(path: Path, weight: np.ndarray) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows, cols = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", cols])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(weight, "fc.weight"),
            numpy_helper.from_array(np.ones(rows, np.float32), "fc.bias"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="session")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(A, B) of every format: B moved from A on most layers, one layer byte-equal."""
    root = tmp_path_factory.mktemp("torch_free_diff")
    rng = np.random.default_rng(2611)
    base = _state(rng)
    tuned = _tuned(rng, base)
    found = {
        "safetensors": (_save(base, root / "a.safetensors"), _save(tuned, root / "b.safetensors"))
    }
    found["sharded"] = (found["safetensors"][0], _shard(tuned, root / "sharded"))
    for side, tensors in (("a", base), ("b", tuned)):
        (root / f"folder_{side}").mkdir()
        _save(
            {k: tensors[k] for k in ("big.weight", "wide.weight")},
            root / f"folder_{side}" / "model.safetensors",
        )
    found["folder"] = (root / "folder_a", root / "folder_b")

    matrix = rng.standard_normal((280, 260)).astype(np.float32)
    moved = (matrix + 0.05 * np.outer(rng.standard_normal(280), rng.standard_normal(260))).astype(
        np.float32
    )
    for side, array in (("a", matrix), ("b", moved)):  # the array is named after the file
        (root / side).mkdir()
        np.save(root / side / "w.npy", array)
    found["npy"] = (root / "a" / "w.npy", root / "b" / "w.npy")
    small, large = rng.standard_normal((40, 30)), rng.standard_normal((200, 150))
    np.savez(root / "a.npz", **{"a.weight": small, "b.weight": large})
    np.savez(root / "b.npz", **{"a.weight": small * 1.1, "b.weight": large + 0.1})
    found["npz"] = (root / "a.npz", root / "b.npz")

    found["keras"] = (
        DATA / "keras_small.keras",
        _keras_moved(DATA / "keras_small.keras", root / "b.keras", rng),
    )
    weight = rng.standard_normal((150, 140)).astype(np.float32)
    found["onnx"] = (
        _onnx(root / "a.onnx", weight),
        _onnx(
            root / "b.onnx",
            (weight * (1 + 0.01 * rng.standard_normal(weight.shape))).astype(np.float32),
        ),
    )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gguf_llama import llama_state_dict, write_gguf

    state = llama_state_dict()
    from safetensors.numpy import save_file as save_numpy

    save_numpy(state, str(root / "llama.safetensors"))
    for qtype in ("Q8_0", "F16"):
        write_gguf(root / f"llama-{qtype}.gguf", state, qtype)
    found["gguf"] = (root / "llama-F16.gguf", root / "llama-Q8_0.gguf")
    found["quantized"] = (root / "llama.safetensors", root / "llama-Q8_0.gguf")
    return found


def _torch_free(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    done = no_torch.run_without_torch(args, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _invoke(args: list[str]) -> tuple[dict[str, Any], str]:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def _with_torch(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(Checkpoint, "numpy_native", property(lambda _: False))
    _forbid_numpy_kernels(monkeypatch)
    return _invoke(args)[0]


def _leaves(
    node: Any, path: tuple[str, ...] = (), record: dict | None = None
) -> Iterator[tuple[tuple[str, ...], Any, dict]]:
    """(path of keys, value, the enclosing layer record) for every scalar."""
    if isinstance(node, dict):
        inner = node if "name" in node or "layer" in node else (record or {})
        for field, value in node.items():
            yield from _leaves(value, (*path, field), inner)
    elif isinstance(node, list):
        for item in node:
            yield from _leaves(item, path, record)
    else:
        yield path, node, record or {}


#: Fields computed by the same NumPy code from the same float64 numbers in both runs.
SAME_CODE = {"subspace_cosines": 1e-12, "subspace_error": 1e-9}
FLOAT64 = 1e-11
ITERATIVE = 1e-6


def _tolerance(path: tuple[str, ...], record: dict[str, Any], method: str) -> tuple[float, float]:
    """(relative, absolute) allowed between the torch-free and the torch value (docstring)."""
    field = path[-1]
    sigma = FLOAT64 if method == "exact" else ITERATIVE  # auto's σ may be a float32 Lanczos
    if field in SAME_CODE:
        return 0.0, SAME_CODE[field]
    if "sigma_drift" in path or field in ("sigma_drift_max", "drift_first", "drift_prev"):
        return 0.0, 3 * sigma
    if field in ("delta_frobenius", "relative_frobenius") or "frobenius" in field:
        return 1e-12, 0.0
    if field in ("sigma_a", "sigma_b", "sigma_max"):
        return sigma, 0.0
    if field in ("delta_sigma", "delta"):
        return (FLOAT64 if record.get("delta_bound") == "exact" else sigma), 0.0
    if field == "delta_upper":
        return FLOAT64, 0.0
    if field in ("relative", "delta_relative") or field.startswith("relative_"):
        return 2 * sigma + 1e-12, 0.0
    return 0.0, 0.0


def assert_same_numbers(got: dict[str, Any], want: dict[str, Any], method: str = "auto") -> float:
    """Every leaf of ``got`` equals ``want``'s within :func:`_tolerance`; returns the largest
    relative difference of a float seen (for the record)."""
    left, right = list(_leaves(got)), list(_leaves(want))
    assert [p for p, _, _ in left] == [p for p, _, _ in right], "the JSON documents differ in shape"
    worst = 0.0
    for (path, a, record), (_, b, _) in zip(left, right, strict=True):
        if isinstance(a, float) and isinstance(b, float):
            rel, absolute = _tolerance(path, record, method)
            assert math.isclose(a, b, rel_tol=rel, abs_tol=absolute), (
                f"{'.'.join(path)} of {record.get('name')}: {a!r} against {b!r}"
            )
            if a != b:
                worst = max(worst, abs(a - b) / max(abs(a), abs(b)))
        else:
            assert type(a) is type(b) and a == b, (
                f"{'.'.join(path)} of {record.get('name')}: {a!r} against {b!r}"
            )
    return worst


CASES = [
    ("safetensors", ()),
    ("safetensors", ("-m", "exact", "--certified")),
    ("safetensors", ("--top-k", "0", "--intruder-top-k", "0")),  # σ from the σ kernels alone
    ("sharded", ()),
    ("folder", ()),
    ("npy", ()),
    ("npz", ("-m", "exact")),
    ("keras", ()),
    ("onnx", ()),
    ("gguf", ()),
    ("quantized", ()),
    ("quantized", ("-m", "exact", "--certified")),
]


@pytest.mark.parametrize(("name", "extra"), CASES, ids=[f"{n}{''.join(e)}" for n, e in CASES])
def test_diff_without_torch_matches_torch(
    pairs: dict[str, tuple[Path, Path]],
    name: str,
    extra: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = pairs[name]
    args = [*DIFF, str(a), str(b), *extra]
    free = _torch_free(args)
    reference = _with_torch(args, monkeypatch)
    assert free["layers"], "nothing was compared"
    assert_same_numbers(free, reference, "exact" if "exact" in extra else "auto")


def test_cases_take_every_route(pairs: dict[str, tuple[Path, Path]]) -> None:
    """The safetensors pair holds a byte-equal layer, moved ones, a retyped one, tensors on one
    side only, a bf16 layer with NaN and Inf in B, and both the dense and the iterated
    subspaces; the GGUF pair undoes llama.cpp's row permutation (so the comparison above covers
    those branches)."""
    a, b = pairs["safetensors"]
    report = _torch_free([*DIFF, str(a), str(b)])
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["same.weight"]["unchanged"] and not layers["big.weight"]["unchanged"]
    assert layers["retyped.weight"]["dtype_b"] == "float16"
    assert report["only_in_a"] == ["gone.weight"] and report["only_in_b"] == ["new.weight"]
    assert report["unmeasured"] == [
        {"name": "bad.weight", "reason": "non-finite values (1 NaN, 1 Inf) in B"}
    ]
    assert "wn.weight" in layers and layers["wide.weight"]["dtype_a"] == "bfloat16"
    quantized = _torch_free([*DIFF, *map(str, pairs["quantized"])])
    assert any("permutation undone" in layer.get("rows", "") for layer in quantized["layers"])
    assert quantized["quantization"]["by_type"]


def test_track_delta_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``track RUN --delta``: ‖W_t − W_{t−1}‖₂ through ``diff`` without torch, as torch gives it."""
    from tests.track_runs import make_run

    make_run(tmp_path / "run")
    args = ["track", str(tmp_path / "run"), "--delta", "--no-cache", "--format", "json"]
    free = _torch_free(args)
    reference = _with_torch(args, monkeypatch)
    deltas = [p["delta"] for p in free["points"] if p["delta"] is not None]
    assert deltas and all(d >= 0 for d in deltas)
    assert_same_numbers(free, reference)


# --- --device cuda --------------------------------------------------------------------------


def test_device_cuda_falls_back_with_a_note(
    pairs: dict[str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No CUDA: the CPU's NumPy run, the same numbers to the bit, and the note inspect gives."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    a, b = map(str, pairs["safetensors"])
    on_cpu, quiet = _invoke([*DIFF, a, b])
    fallen, note = _invoke([*DIFF, a, b, "--device", "cuda"])
    assert fallen == on_cpu
    assert "device 'cuda' requested but CUDA is not available; computed on the CPU" in note
    assert "CUDA" not in quiet


def test_device_cuda_branch_runs_torch_kernels(
    pairs: dict[str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``--device cuda`` code path, with "cuda" resolved to torch's CPU device: torch
    tensors and torch's σ kernels (NumPy's are made to fail), the numbers of the NumPy path."""
    import sncli.diff

    a, b = map(str, pairs["safetensors"])
    numpy_run, _ = _invoke([*DIFF, a, b])
    requested = []
    monkeypatch.setattr(
        sncli.diff, "resolve_device", lambda device: (requested.append(device), ("cpu", None))[1]
    )
    _forbid_numpy_kernels(monkeypatch)
    torch_run, _ = _invoke([*DIFF, a, b, "--device", "cuda"])
    assert requested == ["cuda"]
    assert_same_numbers(torch_run, numpy_run)


def test_device_with_scheduler_is_refused(pairs: dict[str, tuple[Path, Path]]) -> None:
    a, b = map(str, pairs["npy"])
    result = CliRunner().invoke(
        app, ["diff", a, b, "--device", "cuda", "--scheduler", "tcp://127.0.0.1:1"]
    )
    assert result.exit_code == 1
    assert "--scheduler runs the layers on the Dask workers' CPUs" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_cuda_on_a_gpu(pairs: dict[str, tuple[Path, Path]]) -> None:
    """On a real GPU: σ of A, B and B − A computed there, within the methods' tolerances of the
    CPU run (float32 Lanczos on another device: 1e-5 relative, the methods' target 1e-4;
    float64: 1e-10)."""
    from sncli.analysis import MethodOptions
    from sncli.checkpoint import open_checkpoint
    from sncli.diff import diff_checkpoints

    a, b = pairs["safetensors"]
    with open_checkpoint(a) as ca, open_checkpoint(b) as cb:
        cpu = diff_checkpoints(ca, cb)
        gpu = diff_checkpoints(ca, cb, options=MethodOptions(device="cuda"))
    assert gpu.device.startswith("cuda") and gpu.device_note is None and gpu.workers == 1
    for x, y in zip(gpu.layers, cpu.layers, strict=True):
        assert x.name == y.name and x.unchanged == y.unchanged
        for field in ("sigma_a", "sigma_b", "delta_sigma"):
            assert math.isclose(getattr(x, field), getattr(y, field), rel_tol=1e-5), (x.name, field)
        assert math.isclose(x.delta_frobenius, y.delta_frobenius, rel_tol=1e-10)
        # the same NumPy code on the same float64 numbers (weight norm: composed by torch there)
        cosines = zip(x.subspace_cosines or (), y.subspace_cosines or (), strict=True)
        assert all(math.isclose(p, q, abs_tol=1e-12) for p, q in cosines)


def test_subspaces_read_bfloat16_bits_as_values() -> None:
    """``subspaces.as_float64`` of a bf16 array (its uint16 bits) gives the values, as torch's
    upcast does, not the bit patterns as integers."""
    from sncli.arrays import from_torch
    from sncli.numerics.subspaces import as_float64

    weight = torch.tensor([[1.5, -2.0], [0.1, 3e38]], dtype=torch.bfloat16)
    assert np.array_equal(as_float64(from_torch(weight)), weight.double().numpy())
