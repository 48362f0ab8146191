"""inspect and spectrum on safetensors, GGUF, NumPy, Keras and ONNX files, and lipschitz and
report on such state dicts of linear layers, never import torch, and give the numbers torch's
kernels give (issue 26, "torch only where it must be").

Each case runs ``sncli`` in a subprocess in which torch cannot be imported (a meta-path finder
raises ImportError for ``torch`` and ``torch.*``), and the same command in this process with
the checkpoint read as torch tensors (``Checkpoint.numpy_native`` patched to False), so the
torch σ/spectrum kernels run: the reference. Every JSON value is compared:

* strings, booleans, integers (iteration and Lanczos step counts included) exactly, except
  ``power``'s iteration count, which rounding may move by its stopping rule (±2, as in the
  golden tests);
* float64 results (``bound: exact``: dense eigvalsh, float64 Lanczos to 1e-12, certified upper
  bounds; full spectra and their metrics) to 1e-11 relative: the same LAPACK algorithms in
  float64 on a different library (NumPy's OpenBLAS against torch's MKL; measured ≤ 3e-15),
  except σ_min and σ_max/σ_min of a spectrum, which the Gram method gives to ε·κ² (allowed
  4·ε·κ², see tests/test_golden.py);
* iterative σ (``bound: lower``): both paths start from the same random block (NumPy draws
  torch's numbers, :func:`sncli.arrays.torch_randn`), so they differ only by the rounding of
  float32 products: 1e-6 relative (measured ≤ 1.2e-10; the methods' own tolerance is 1e-4);
  ``power`` to 1e-5 (its 1e-6 stopping rule); error estimates to 1e-8 absolute (rounding noise
  of a converged residual; measured ≤ 1e-9); top-K Lanczos values to 1e-9 relative (float64
  to a 1e-8 target).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
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
from sncli.numerics import bounds_numpy, spectral_numpy, svd_numpy
from tests import no_torch

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "formats" / "data"

#: Runs ``python -m sncli ARGS`` with torch unimportable.
NO_TORCH = no_torch.NO_TORCH

INSPECT = ("inspect", "--format", "json")
COMMANDS = {
    "auto": INSPECT,
    "exact-certified": (*INSPECT, "--method", "exact", "--certified"),
    "lanczos": (*INSPECT, "--method", "lanczos"),
    "power": (*INSPECT, "--method", "power"),
    "dense": (*INSPECT, "--method", "dense"),
    "spectrum": ("spectrum", "--format", "json"),
    "top-k": ("spectrum", "--top-k", "3", "--format", "json"),
    "allocation": ("spectrum", "--hill", "--snr", "--mp-fit", "--randomize", "--format", "json"),
}


def _rng_tensor(rng: np.random.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    values = rng.standard_normal(shape) * rng.uniform(0.05, 3.0)
    return torch.from_numpy(values).to(dtype)


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small files of each format, with layers that take every σ route: dense (small side ≤
    128), float32 Lanczos (auto), float64 Lanczos (exact, side > 256), bf16/fp16 upcasts, a conv,
    a weight-norm pair and a spectral-norm layer with stored u, v."""
    root = tmp_path_factory.mktemp("torch_free")
    rng = np.random.default_rng(26)
    single = {
        "big.weight": _rng_tensor(rng, 300, 270, dtype=torch.float32),
        "wide.weight": _rng_tensor(rng, 140, 400, dtype=torch.bfloat16),
        "half.weight": _rng_tensor(rng, 160, 150, dtype=torch.float16),
        "small.weight": _rng_tensor(rng, 24, 40, dtype=torch.float64),
        "small.bias": _rng_tensor(rng, 24, dtype=torch.float32),
        "conv.weight": _rng_tensor(rng, 16, 8, 3, 3, dtype=torch.float32),
        "wn.weight_g": _rng_tensor(rng, 32, 1, dtype=torch.float32).abs(),
        "wn.weight_v": _rng_tensor(rng, 32, 48, dtype=torch.float32),
    }
    square = _rng_tensor(rng, 8, 8, 3, 3, dtype=torch.float32)  # in == out: u, v decide
    single["sn.weight_orig"] = square
    single["sn.weight_u"] = torch.from_numpy(rng.standard_normal(8)).float()
    single["sn.weight_v"] = torch.from_numpy(rng.standard_normal(72)).float()
    legacy = torch.load(REPO / "sample_models" / "sngan_disc_legacy.pt", weights_only=True)
    single.update({k: v.contiguous() for k, v in legacy.items() if k.startswith("main.0.")})
    paths = {"safetensors": root / "single.safetensors"}
    save_file(single, str(paths["safetensors"]))

    shards = root / "sharded"
    shards.mkdir()
    names = sorted(single)
    weight_map = {}
    for index, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{index + 1}-of-00002.safetensors"
        save_file({k: single[k] for k in part}, str(shards / file))
        weight_map.update(dict.fromkeys(part, file))
    index_path = shards / "model.safetensors.index.json"
    index_path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    paths["sharded"] = index_path
    folder = root / "folder"
    folder.mkdir()
    pair = {k: single[k] for k in ("big.weight", "wide.weight")}
    save_file(pair, str(folder / "model.safetensors"))
    paths["folder"] = folder
    snapshot = root / "hub" / "models--sncli-test--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(pair, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    paths["hf-id"] = root / "hub"  # the cache; the command names the id

    paths["npy"] = root / "w.npy"
    np.save(paths["npy"], rng.standard_normal((280, 260)).astype(np.float32))
    paths["npz"] = root / "w.npz"
    np.savez(
        paths["npz"],
        **{"a.weight": rng.standard_normal((40, 30)), "b.weight": rng.standard_normal((200, 150))},
    )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gguf_llama import llama_state_dict, write_gguf

    state = llama_state_dict()
    for name, qtype in (("gguf-q8", "Q8_0"), ("gguf-f16", "F16")):
        paths[name] = root / f"{name}.gguf"
        write_gguf(paths[name], state, qtype)

    import gguf

    paths["gguf-moe"] = root / "moe.gguf"
    writer = gguf.GGUFWriter(str(paths["gguf-moe"]), "qwen2moe")
    writer.add_expert_count(4)
    writer.add_tensor("blk.0.ffn_down_exps.weight", rng.standard_normal((4, 64, 160)).astype("f4"))
    writer.add_tensor("blk.0.ffn_gate_exps.weight", rng.standard_normal((4, 160, 64)).astype("f4"))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = rng.standard_normal((150, 140)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 140])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(weight, "fc.weight"),
            numpy_helper.from_array(np.ones(150, np.float32), "fc.bias"),
        ],
    )
    paths["onnx"] = root / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), paths["onnx"])
    paths["keras"] = DATA / "keras_small.keras"
    paths["h5"] = DATA / "keras_small_legacy.h5"
    return paths


#: (file, command) pairs: every command on the main safetensors file, the common ones elsewhere.
CASES = (
    [("safetensors", name) for name in COMMANDS]
    + [
        (fmt, name)
        for fmt in (
            *("sharded", "folder", "hf-id", "npy", "npz"),
            *("gguf-q8", "gguf-f16", "onnx", "keras", "h5"),
        )
        for name in ("auto", "exact-certified", "spectrum")
    ]
    + [("npy", "top-k"), ("gguf-f16", "power"), ("gguf-moe", "auto"), ("gguf-moe", "spectrum")]
    + [("gguf-f16", "allocation"), ("npz", "allocation")]
)


def _torch_free(
    args: list[str], *, script: str = NO_TORCH, output_json: bool = True
) -> dict[str, Any]:
    done = no_torch.run_without_torch(args, script=script)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if output_json else {}


def _with_torch(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(Checkpoint, "numpy_native", property(lambda _: False))
    _forbid_numpy_kernels(monkeypatch)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _forbid_numpy_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    def numpy_kernel(*_: object, **__: object) -> None:
        raise AssertionError("the reference run must use torch's kernels")

    for module, name in (
        (spectral_numpy, "largest_singular_value_array"),
        (svd_numpy, "singular_values_array"),
        (svd_numpy, "top_singular_values_array"),
        (bounds_numpy, "sigma_interval_array"),
    ):
        monkeypatch.setattr(module, name, numpy_kernel)


def _leaves(node: Any, record: dict[str, Any], key: str = "") -> Iterator[tuple[str, Any, dict]]:
    if isinstance(node, dict):
        inner = node if "name" in node else record
        for field, value in node.items():
            yield from _leaves(value, inner, field)
    elif isinstance(node, list):
        for item in node:
            yield from _leaves(item, record, key)
    else:
        yield key, node, record


def _tolerance(field: str, record: dict[str, Any]) -> tuple[float, float]:
    """(relative, absolute) allowed between the torch-free and the torch value (docstring)."""
    lower = record.get("bound") == "lower"
    if field == "error_estimate" or field == "error_estimates":
        return 0.0, 1e-8
    if field in ("sigma_min", "condition_number"):
        kappa = float(record.get("condition_number") or 0.0)
        return max(1e-11, 4 * 2.0**-52 * kappa * kappa), 0.0
    if record.get("method") == "power" and lower:
        return 1e-5, 0.0
    if lower and "values" in record:  # spectrum --top-k: float64 Lanczos
        return 1e-9, 0.0
    if lower:
        return 1e-6, 0.0
    return 1e-11, 1e-300


def _compare(free: dict[str, Any], reference: dict[str, Any]) -> float:
    """Assert every value agrees (see the module docstring); returns the largest relative gap
    of a float."""
    left = list(_leaves(free, {}))
    right = list(_leaves(reference, {}))
    assert [k for k, _, _ in left] == [k for k, _, _ in right]
    layers = {layer["name"]: layer for layer in reference.get("layers", [])}
    worst = 0.0
    for (field, a, record), (_, b, _) in zip(left, right, strict=True):
        if field == "seconds":
            continue
        if "bound" not in record:  # a summary naming a layer (the largest σ): as that layer
            record = layers.get(record.get("name"), record)
        if field == "iterations" and record.get("method") == "power":
            assert abs(a - b) <= 2, (record.get("name"), a, b)
        elif isinstance(b, float) and not isinstance(a, bool):
            rel, absolute = _tolerance(field, record)
            assert math.isclose(a, b, rel_tol=rel, abs_tol=absolute), (
                record.get("name"),
                field,
                a,
                b,
            )
            if b:
                worst = max(worst, abs(a - b) / abs(b))
        else:
            assert a == b, (record.get("name"), field, a, b)
    return worst


@pytest.mark.parametrize(("fmt", "command"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_same_numbers_without_torch(
    files: dict[str, Path], fmt: str, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = str(files[fmt])
    if fmt == "hf-id":  # the subprocess inherits HF_HUB_CACHE
        monkeypatch.setenv("HF_HUB_CACHE", target)
        target = "sncli-test/tiny"
    args = [COMMANDS[command][0], target, *COMMANDS[command][1:]]
    free = _torch_free(args)
    reference = _with_torch(args, monkeypatch)
    assert free["layers"], "nothing was measured"
    _compare(free, reference)


def test_large_checkpoints_take_torch_kernels(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above NUMPY_KERNELS_MAX_PARAMETERS (with torch installed, on Intel) the NumPy-read
    formats are measured with torch's kernels — the same numbers within this file's
    tolerances; without torch, or on other CPUs, they stay on NumPy; a state dict in memory
    always does."""
    import importlib.util

    import sncli.checkpoint as checkpoint_module
    from sncli.checkpoint import open_checkpoint

    path = files["safetensors"]
    with open_checkpoint(path) as ckpt:
        assert ckpt.numpy_native
    monkeypatch.setattr(checkpoint_module, "NUMPY_KERNELS_MAX_PARAMETERS", 10)
    monkeypatch.setattr(checkpoint_module, "_intel_cpu", lambda: False)
    with open_checkpoint(path) as ckpt:
        assert ckpt.numpy_native  # AMD and others: OpenBLAS outruns MKL there
    monkeypatch.setattr(checkpoint_module, "_intel_cpu", lambda: True)
    with open_checkpoint(path) as ckpt:
        assert not ckpt.numpy_native
    args = ["inspect", str(path), "--format", "json"]
    numpy_run = _torch_free(args)  # a fresh process: the real threshold, NumPy kernels
    with monkeypatch.context() as patch:
        _forbid_numpy_kernels(patch)
        result = CliRunner().invoke(app, args)  # this process: the lowered threshold, torch
    assert result.exit_code == 0, result.output
    _compare(json.loads(result.stdout), numpy_run)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch" else real_find_spec(name, *a),
    )
    with open_checkpoint(path) as ckpt:
        assert ckpt.numpy_native


def test_the_blocker_blocks() -> None:
    """A command that needs torch (a PyTorch file) fails under the blocker: it is real."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TORCH,
            "inspect",
            str(REPO / "sample_models" / "sngan_disc_legacy.pt"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        check=False,
    )
    assert done.returncode != 0
    assert "torch" in done.stderr


# --- lipschitz and report on dense (linear-only) state dicts --------------------------------
#
# The product bound's factors on NumPy (dense float64 σ, the certified interval of
# sncli.numerics.bounds_numpy, ECLipsE-Fast's float64 proof, BatchNorm and PReLU read as arrays)
# against torch's kernels, with the same tolerances as above: dense and certified values to
# 1e-11 relative (measured ≤ 2e-14, on the log10 shares), report's inspect σ (auto: from the
# spectra) and spectra as for inspect and spectrum. A conv layer needs torch (the operator
# norm), so these files hold none; Keras's conv is measured with ``--conv reshape`` (a matrix
# σ, no operator norm).

LIPSCHITZ = {
    "default": ("lipschitz", "--format", "json"),
    "certified": ("lipschitz", "--certified", "--format", "json"),
    "mlp": ("lipschitz", "--assume", "sequential", "--mlp", "--format", "json"),
    "reshape": ("lipschitz", "--conv", "reshape", "--certified", "--format", "json"),
}


@pytest.fixture(scope="session")
def dense_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A chain of linear layers in every dtype (bf16, fp16, float32, float64) with a
    spectral-norm layer (stored u, v) and a weight-norm pair, in safetensors (single and
    sharded) and npz; a BatchNorm + PReLU net in safetensors; the GGUF LLaMA (linear only)."""
    root = tmp_path_factory.mktemp("torch_free_dense")
    rng = np.random.default_rng(2026)
    chain = {
        "0.weight": _rng_tensor(rng, 40, 24, dtype=torch.float64),
        "0.bias": _rng_tensor(rng, 40, dtype=torch.float32),
        "2.weight": _rng_tensor(rng, 300, 40, dtype=torch.bfloat16),
        "4.weight": _rng_tensor(rng, 260, 300, dtype=torch.float32),
        "6.weight_orig": _rng_tensor(rng, 60, 260, dtype=torch.float32),
        "6.weight_u": torch.from_numpy(rng.standard_normal(60)).float(),
        "6.weight_v": torch.from_numpy(rng.standard_normal(260)).float(),
        "8.weight_g": _rng_tensor(rng, 30, 1, dtype=torch.float32).abs(),
        "8.weight_v": _rng_tensor(rng, 30, 60, dtype=torch.float16),
        "10.weight": _rng_tensor(rng, 10, 30, dtype=torch.float16),
    }
    paths = {"chain": root / "chain.safetensors"}
    save_file(chain, str(paths["chain"]))
    shards = root / "sharded"
    shards.mkdir()
    names = sorted(chain)
    weight_map = {}
    for index, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{index + 1}-of-00002.safetensors"
        save_file({k: chain[k] for k in part}, str(shards / file))
        weight_map.update(dict.fromkeys(part, file))
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    paths["chain-sharded"] = shards / "model.safetensors.index.json"
    paths["chain-npz"] = root / "chain.npz"
    np.savez(paths["chain-npz"], **{k: v.float().numpy() for k, v in chain.items()})
    net = {
        "0.weight": _rng_tensor(rng, 32, 16, dtype=torch.float32),
        "1.weight": _rng_tensor(rng, 32, dtype=torch.float32),
        "1.bias": _rng_tensor(rng, 32, dtype=torch.float32),
        "1.running_mean": _rng_tensor(rng, 32, dtype=torch.float32),
        "1.running_var": _rng_tensor(rng, 32, dtype=torch.float32).abs() + 0.1,
        "1.num_batches_tracked": torch.tensor(7),
        "2.prelu.weight": _rng_tensor(rng, 32, dtype=torch.float32),
        "3.weight": _rng_tensor(rng, 8, 32, dtype=torch.bfloat16),
    }
    paths["bn-prelu"] = root / "bn_prelu.safetensors"
    save_file(net, str(paths["bn-prelu"]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gguf_llama import llama_state_dict, write_gguf

    paths["gguf"] = root / "llama.gguf"
    write_gguf(paths["gguf"], llama_state_dict(), "F16")
    paths["keras"] = DATA / "keras_small.keras"
    paths["mlp-sample"] = REPO / "sample_models" / "mlp.safetensors"
    return paths


LIPSCHITZ_CASES = (
    [(fmt, name) for fmt in ("chain", "chain-sharded", "chain-npz") for name in LIPSCHITZ]
    + [(fmt, name) for fmt in ("bn-prelu", "gguf", "mlp-sample") for name in LIPSCHITZ]
    + [("keras", "reshape")]
)


@pytest.mark.parametrize(
    ("fmt", "command"), LIPSCHITZ_CASES, ids=[f"{f}-{c}" for f, c in LIPSCHITZ_CASES]
)
def test_lipschitz_same_numbers_without_torch(
    dense_files: dict[str, Path], fmt: str, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [LIPSCHITZ[command][0], str(dense_files[fmt]), *LIPSCHITZ[command][1:]]
    free = _torch_free(args)
    reference = _with_torch(args, monkeypatch)
    assert free["layers"], "nothing was bounded"
    _compare(free, reference)
    if command == "mlp" and fmt.startswith("chain"):  # ECLipsE-Fast ran, on NumPy
        assert free["mlp"]["method"] == "eclipse-fast", free["mlp"]
    if fmt == "bn-prelu":
        assert {f["kind"] for f in free["layers"]} == {"linear", "batchnorm", "prelu"}


#: ``sncli.report.build_report`` in a process where torch cannot be imported; prints the JSON of
#: its σ, spectra and Lipschitz parts (the renderers the commands' ``--format json`` use).
REPORT_PARTS = """
from sncli.render.common import write_json
from sncli.render.inspect import inspect_to_dict
from sncli.render.lipschitz import lipschitz_to_dict
from sncli.render.spectrum import spectrum_to_dict
from sncli.report import build_report


def report_parts(path):
    report = build_report(path)
    assert report.lipschitz is not None, report.lipschitz_error
    assert report.spectrum is not None, report.spectrum_error
    return {
        "inspect": inspect_to_dict(report.inspect, report.inspect.layers),
        "spectrum": spectrum_to_dict(report.spectrum, report.spectrum.layers),
        "lipschitz": lipschitz_to_dict(report.lipschitz),
    }
"""
NO_TORCH_REPORT = no_torch.BLOCK_TORCH + REPORT_PARTS + "\nwrite_json(report_parts(sys.argv[1]))\n"


@pytest.mark.parametrize("fmt", ["chain", "chain-npz", "bn-prelu", "gguf"])
def test_report_same_numbers_without_torch(
    dense_files: dict[str, Path],
    fmt: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``sncli report`` writes its HTML with torch unimportable, and the report's σ, spectra
    and Lipschitz factors (the library's) equal the torch path's."""
    page = tmp_path / "report.html"
    _torch_free(["report", str(dense_files[fmt]), "-o", str(page)], output_json=False)
    text = page.read_text(encoding="utf-8")
    assert "<svg" in text and "Lipschitz" in text
    free = _torch_free([str(dense_files[fmt])], script=NO_TORCH_REPORT)
    monkeypatch.setattr(Checkpoint, "numpy_native", property(lambda _: False))
    namespace: dict[str, Any] = {}
    exec(REPORT_PARTS, namespace)  # the same function, in this process on torch
    reference = json.loads(json.dumps(namespace["report_parts"](str(dense_files[fmt]))))
    for part in ("inspect", "spectrum", "lipschitz"):
        _compare(free[part], reference[part])
    assert {f["name"] for f in free["lipschitz"]["layers"]} == {
        f["name"] for f in reference["lipschitz"]["layers"]
    }
