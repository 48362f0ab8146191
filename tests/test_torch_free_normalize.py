"""``sncli normalize`` on safetensors and GGUF never imports torch, and writes the files the
torch path writes (issue 26, "torch only where it must be").

Each case runs ``sncli normalize`` in a subprocess in which torch cannot be imported (the
meta-path finder of tests/test_torch_free.py), and the same command in this process with the
checkpoint read as torch tensors (``Checkpoint.numpy_native`` patched to False, NumPy's σ
kernels and casts forbidden): the torch path, as main runs it. Compared:

* every written file, byte for byte (tensor data, safetensors header order and metadata, GGUF
  header and offsets, the sharded index);
* every JSON value: strings, booleans, integers (shaves) exactly; floats (σ before and after,
  scale factors) to 1e-12 relative. σ comes from NumPy's LAPACK instead of torch's, which agree
  to a few ulps (measured ≤ 1e-15 relative); the factors and casts are the same IEEE operations
  (:func:`sncli.scaling.cast_float64`), so the stored values agree unless a σ's last bit moves
  a product across a rounding boundary of the stored dtype (~2⁻⁴⁴ per bf16 element);
* the table, character for character (σ printed to 4–6 digits).

The failure paths without torch: a refused input exits 1 with one line and leaves every file as
it was, and no temporary file behind.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from sncli import scaling
from sncli.checkpoint import Checkpoint
from sncli.cli import app
from sncli.numerics import spectral_numpy
from sncli.scaling import cast_float64
from tests.no_torch import run_without_torch

REPO = Path(__file__).resolve().parent.parent


#: Relative gap allowed between a float of the torch-free run and the torch path's (docstring).
FLOAT_REL = 1e-12


def _tensor(rng: np.random.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    values = rng.standard_normal(shape) * rng.uniform(0.5, 4.0)
    return torch.from_numpy(values).to(dtype)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """(a) a bf16 safetensors file (with an fp16 layer, a conv, biases, metadata, a
    spectral-norm layer, a BatchNorm), also as a Hugging Face id in a hub cache; (b) an fp32
    sharded folder with an index, one shard holding no layer; (c) a GGUF file from gguf's
    GGUFWriter (F32, F16, BF16, a norm, a quantized tensor) and a mixture-of-experts GGUF
    stack."""
    root = tmp_path_factory.mktemp("normalize_inputs")
    rng = np.random.default_rng(2026)
    bf16 = torch.bfloat16
    single = {
        "fc1.weight": _tensor(rng, 300, 270, dtype=bf16),
        "fc1.bias": _tensor(rng, 300, dtype=bf16),
        "fc2.weight": _tensor(rng, 64, 300, dtype=bf16),
        "half.weight": _tensor(rng, 40, 64, dtype=torch.float16),
        "conv.weight": _tensor(rng, 16, 8, 3, 3, dtype=bf16),
        "bn.weight": _tensor(rng, 16, dtype=bf16),
        "bn.bias": _tensor(rng, 16, dtype=bf16),
        "bn.running_mean": _tensor(rng, 16, dtype=torch.float32),
        "bn.running_var": _tensor(rng, 16, dtype=torch.float32).abs() + 0.1,
        "bn.num_batches_tracked": torch.tensor(7),
        "sn.weight_orig": _tensor(rng, 24, 32, dtype=torch.float32),
        "sn.weight_u": _tensor(rng, 24, dtype=torch.float32),
        "sn.weight_v": _tensor(rng, 32, dtype=torch.float32),
    }
    paths = {"bf16": root / "model.safetensors"}
    save_file(single, str(paths["bf16"]), metadata={"format": "pt", "note": "kept"})
    snapshot = root / "hub" / "models--sncli-test--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(paths["bf16"], snapshot / "model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    paths["hf-id"] = root / "hub"  # the cache; the command names the id

    shards = root / "sharded"
    shards.mkdir()
    parts = (
        {"l0.weight": _tensor(rng, 128, 96, dtype=torch.float32)},
        {
            "l1.weight": _tensor(rng, 96, 128, dtype=torch.float32),
            "l1.bias": _tensor(rng, 96, dtype=torch.float32),
            "l2.weight": _tensor(rng, 10, 96, dtype=torch.float32),
        },
        {"l2.bias": _tensor(rng, 10, dtype=torch.float32)},  # no layer: copied as it is
    )
    weight_map = {}
    for index, part in enumerate(parts):
        file = f"model-0000{index + 1}-of-00003.safetensors"
        save_file(part, str(shards / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": 0, "note": "kept"}, "weight_map": weight_map}
    (shards / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    paths["sharded"] = shards

    import gguf
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import quantize

    paths["gguf"] = root / "model.gguf"
    writer = gguf.GGUFWriter(str(paths["gguf"]), "llama")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.ffn_up.weight", (rng.standard_normal((96, 64)) * 3).astype("f4"))
    writer.add_tensor("blk.0.ffn_down.weight", (rng.standard_normal((64, 96)) * 3).astype("f2"))
    raw = quantize((rng.standard_normal((32, 64)) * 3).astype("f4"), GGMLQuantizationType.BF16)
    writer.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=GGMLQuantizationType.BF16)
    raw = quantize((rng.standard_normal((32, 64)) * 3).astype("f4"), GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_k.weight", raw, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.ffn_norm.weight", rng.random(64).astype("f4") + 0.5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    paths["gguf-moe"] = root / "moe.gguf"
    writer = gguf.GGUFWriter(str(paths["gguf-moe"]), "qwen2moe")
    writer.add_expert_count(4)
    writer.add_tensor("blk.0.ffn_down_exps.weight", rng.standard_normal((4, 64, 160)).astype("f4"))
    writer.add_tensor("blk.0.ffn_gate_exps.weight", rng.standard_normal((4, 160, 64)).astype("f2"))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return paths


#: (case id, input, extra arguments).
CASES = (
    ("bf16", "bf16", ()),
    ("bf16-clip-norms", "bf16", ("--mode", "clip", "--target", "9", "--norms")),
    ("bf16-bake", "bf16", ("--bake",)),
    ("hf-id", "hf-id", ()),
    ("sharded", "sharded", ()),
    ("sharded-exclude", "sharded", ("--exclude", "l2", "--target", "0.5")),
    ("gguf", "gguf", ("--exclude", "attn_k", "--norms")),
    ("gguf-moe", "gguf-moe", ()),
)


def _run_torch_free(args: list[str]) -> subprocess.CompletedProcess[str]:
    return run_without_torch(args)


def _run_torch(args: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The command in this process on torch tensors and torch's kernels (main's path)."""

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("the reference run must use torch")

    with monkeypatch.context() as patch:
        patch.setattr(Checkpoint, "numpy_native", property(lambda _: False))
        patch.setattr(spectral_numpy, "largest_singular_value_array", forbidden)
        patch.setattr(spectral_numpy, "exact_sigma_array", forbidden)
        patch.setattr(scaling, "cast_float64", forbidden)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` by relative name (a file: itself, as ``.``), with its bytes."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _compare_json(free: Any, reference: Any, where: str = "") -> None:
    """Assert equal structure, strings, booleans and integers, and floats to ``FLOAT_REL``."""
    if isinstance(reference, dict):
        assert list(free) == list(reference), where
        for key in reference:
            _compare_json(free[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, list):
        assert len(free) == len(reference), where
        for index, (a, b) in enumerate(zip(free, reference, strict=True)):
            _compare_json(a, b, f"{where}[{index}]")
    elif isinstance(reference, float):
        assert isinstance(free, float), where
        assert math.isclose(free, reference, rel_tol=FLOAT_REL), (where, free, reference)
    else:
        assert free == reference and type(free) is type(reference), (where, free, reference)


def _outputs(tmp_path: Path, source: Path, label: str) -> Path:
    return tmp_path / label if source.is_dir() else tmp_path / f"{label}{source.suffix}"


@pytest.mark.parametrize(("case", "source", "extra"), CASES, ids=[c[0] for c in CASES])
def test_same_files_and_numbers_without_torch(
    inputs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    source: str,
    extra: tuple[str, ...],
) -> None:
    path = inputs[source]
    before = _tree(path)
    target, shape = str(path), path
    if source == "hf-id":  # the subprocess inherits HF_HUB_CACHE
        monkeypatch.setenv("HF_HUB_CACHE", str(path))
        target, shape = "sncli-test/tiny", inputs["bf16"]
    results = {}
    for fmt in ("json", "table"):
        free_out = _outputs(tmp_path, shape, f"free-{fmt}")
        ref_out = _outputs(tmp_path, shape, f"main-{fmt}")  # "free"'s length: tables wrap alike
        args = ["normalize", target, *extra, "--format", fmt, "-q"]
        done = _run_torch_free([*args, "-o", str(free_out)])
        assert done.returncode == 0, done.stderr
        reference = _run_torch([*args, "-o", str(ref_out)], monkeypatch)
        free_files, ref_files = _tree(free_out), _tree(ref_out)
        assert list(free_files) == list(ref_files)
        for name in ref_files:
            assert free_files[name] == ref_files[name], f"{case}: {name} differs"
        results[fmt] = (
            done.stdout.replace(str(free_out), "OUT"),
            reference.replace(str(ref_out), "OUT"),
        )
    free_json, ref_json = (json.loads(text) for text in results["json"])
    assert [layer["action"] for layer in ref_json["layers"]].count("scale") >= 2, case
    _compare_json(free_json, ref_json)
    assert results["table"][0] == results["table"][1]
    assert _tree(path) == before  # the input is read, never written


def test_sharded_in_place_without_torch(inputs: dict[str, Path], tmp_path: Path) -> None:
    """--in-place on a sharded folder (journal, writer lock, one transaction for every shard)
    without torch rewrites the files to what ``-o`` writes, and leaves no journal or temp file."""
    folder = tmp_path / "in-place"
    shutil.copytree(inputs["sharded"], folder)
    copy = tmp_path / "copy"
    done = _run_torch_free(["normalize", str(inputs["sharded"]), "-o", str(copy), "-q"])
    assert done.returncode == 0, done.stderr
    done = _run_torch_free(["normalize", str(folder), "--in-place", "-q"])
    assert done.returncode == 0, done.stderr
    assert _tree(folder) == _tree(copy)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("source", "args", "message"),
    [
        ("gguf", ("--in-place",), "are quantized (Q8_0"),
        ("gguf", ("-o", "{folder}/model.gguf"), "output is the input file"),
        ("bf16", ("-o", "{folder}/other.safetensors"), "output exists; pass --force"),
        ("sharded", ("--in-place", "--filter", "nothing-matches"), "no layer matched"),
        ("sharded", ("-o", "{folder}/model-00001-of-00003.safetensors"), "needs an output folder"),
    ],
    ids=["quantized-gguf", "output-is-input", "output-exists", "no-match", "shards-to-a-file"],
)
def test_refusals_change_nothing_without_torch(
    inputs: dict[str, Path], tmp_path: Path, source: str, args: tuple[str, ...], message: str
) -> None:
    folder = tmp_path / "work"
    if inputs[source].is_dir():
        shutil.copytree(inputs[source], folder)
        target = folder
    else:
        folder.mkdir()
        target = folder / inputs[source].name
        shutil.copy2(inputs[source], target)
        (folder / "other.safetensors").write_bytes(b"not replaced")
    before = _snapshot(folder)
    argv = ["normalize", str(target), "-q", *(a.format(folder=folder) for a in args)]
    done = _run_torch_free(argv)
    assert done.returncode in (1, 4), done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "torch" not in done.stderr
    assert _snapshot(folder) == before  # no file changed, added (temp, journal) or removed


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_cast_float64_rounds_as_torch(dtype: str) -> None:
    """float64 → stored dtype as torch's ``.to(dtype)``, bit for bit, on values at and next to
    the half-way points of the narrow type (where rounding twice, through float32, differs from
    rounding once), random magnitudes from 1e-45 to 1e40 (subnormals, overflow) and ±0, ±inf."""
    rng = np.random.default_rng(7)
    narrow = getattr(torch, dtype)
    base = torch.from_numpy(rng.standard_normal(50_000)).to(narrow).to(torch.float64)
    step = torch.nextafter(base.to(narrow), torch.tensor(math.inf, dtype=narrow))
    half = ((base + step.to(torch.float64)) / 2).numpy()
    nudge = np.abs(half) * 2.0**-40 * rng.choice([-1.0, 1.0], half.size)
    wide = rng.standard_normal(50_000) * 10.0 ** rng.uniform(-45, 40, 50_000)
    special = np.array([0.0, -0.0, math.inf, -math.inf, 1e300, -1e300, 5e-324, 3.39e38])
    values = np.concatenate([half, half + nudge, wide, special])
    expected = torch.from_numpy(values).to(narrow)
    got = cast_float64(values, dtype)
    bits = {"bfloat16": torch.int16, "float16": torch.int16}.get(dtype)
    if bits is not None:
        expected_bits = expected.view(bits).numpy().view(np.uint16)
        assert np.array_equal(got.view(np.ndarray).view(np.uint16), expected_bits)
    else:
        assert np.array_equal(got.view(np.uint8), expected.numpy().view(np.uint8))
    if dtype == "float16":  # NumPy's own cast rounds once: it would differ at half-way points
        with np.errstate(over="ignore"):
            assert not np.array_equal(values.astype(np.float16), expected.numpy())
