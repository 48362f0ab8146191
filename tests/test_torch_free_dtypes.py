"""float8 safetensors are read without torch (issue 26, item 1): every code of each float8
format decodes by a 256-entry table (:func:`sncli.dtypes.float8_table`) to what torch's own
conversion gives, and ``inspect``/``spectrum`` on float8 files run with torch unimportable and
give the numbers torch's path gives.

The tables are checked bit for bit against ``tensor.to(torch.float32)`` for all 256 codes (NaN
codes as NaN, −0 as −0, ±inf where the format has it) and, independently of torch, against
values the format definitions fix (OCP OFP8 rev. 1.0: e4m3fn max 448, e5m2 max 57344 and ±inf;
the FNUZ variants' bias one more: max 240 and 57344, NaN only at 0x80; MX e8m0 2^(e−127)). The
commands are compared with tests/test_torch_free.py's subprocess-without-torch and its
tolerances (``_compare``; its docstring states them): a float8 weight is exact in float32 on
both paths, so the same kernels see the same float32 matrix.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sncli.dtypes import FLOAT8_FORMATS, SAFETENSORS_DTYPES, TORCH_TO_SAFETENSORS, float8_table
from sncli.formats.safetensors import safetensors_header_bytes
from tests.test_torch_free import _compare, _torch_free, _with_torch

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("name", sorted(FLOAT8_FORMATS))
def test_table_matches_torch_for_every_code(name: str) -> None:
    table = float8_table(name)
    codes = torch.arange(256, dtype=torch.uint8)
    reference = codes.view(getattr(torch, name)).to(torch.float32).numpy()
    assert table.dtype == np.float32 and table.shape == (256,)
    nan = np.isnan(reference)
    np.testing.assert_array_equal(np.isnan(table), nan)
    # Bit for bit where not NaN: −0.0, ±inf and every subnormal included.
    np.testing.assert_array_equal(table[~nan].view(np.uint32), reference[~nan].view(np.uint32))
    assert not table.flags.writeable  # shared by every read: nobody may change it


#: Values the format definitions fix, independent of torch: (code, value).
ANCHORS = {
    "float8_e4m3fn": [(0x7E, 448.0), (0x01, 2.0**-9), (0x08, 2.0**-6), (0x38, 1.0), (0x80, -0.0)],
    "float8_e5m2": [(0x7B, 57344.0), (0x7C, math.inf), (0xFC, -math.inf), (0x01, 2.0**-16)],
    "float8_e4m3fnuz": [(0x7F, 240.0), (0x01, 2.0**-10), (0x40, 1.0), (0xFF, -240.0)],
    "float8_e5m2fnuz": [(0x7F, 57344.0), (0x01, 2.0**-17), (0x40, 1.0), (0x7C, 32768.0)],
    "float8_e8m0fnu": [(127, 1.0), (0, 2.0**-127), (254, 2.0**127), (128, 2.0)],
}
NAN_CODES = {
    "float8_e4m3fn": {0x7F, 0xFF},
    "float8_e5m2": {0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF},
    "float8_e4m3fnuz": {0x80},
    "float8_e5m2fnuz": {0x80},
    "float8_e8m0fnu": {0xFF},
}


@pytest.mark.parametrize("name", sorted(FLOAT8_FORMATS))
def test_table_matches_the_format_definition(name: str) -> None:
    table = float8_table(name).astype(np.float64)
    for code, value in ANCHORS[name]:
        assert table[code] == value and math.copysign(1, table[code]) == math.copysign(1, value)
    assert set(np.flatnonzero(np.isnan(table)).tolist()) == NAN_CODES[name]
    finite = table[np.isfinite(table)]
    assert len(np.unique(finite)) == len(finite) - ("fnuz" not in name and "e8m0" not in name)
    # Monotone in the code within each sign (the formats are sign-magnitude).
    positive = table[:128][np.isfinite(table[:128])]
    assert np.all(np.diff(positive) > 0)


def _write(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> Path:
    """A safetensors file from raw (code, shape, bytes), any dtype safetensors names."""
    entries = [(name, code, shape, len(data)) for name, (code, shape, data) in tensors.items()]
    with path.open("wb") as handle:
        handle.write(safetensors_header_bytes(entries, {"format": "pt"}))
        for _, _, data in tensors.values():
            handle.write(data)
    return path


def _float8(rng: np.random.Generator, dtype: torch.dtype, *shape: int) -> tuple:
    values = torch.from_numpy(rng.standard_normal(shape) * rng.uniform(0.05, 2.0))
    stored = values.to(dtype).contiguous()
    code = TORCH_TO_SAFETENSORS[str(dtype).removeprefix("torch.")]
    return code, shape, stored.view(torch.uint8).numpy().tobytes()


@pytest.fixture(scope="module")
def float8_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every analysed float8 format as layers taking the dense, float32-Lanczos and
    float64-Lanczos routes; an e8m0 scale and a packed float4 tensor (not analysed: skipped
    unread); a NaN code and an inf code (skipped layers); a bf16 layer beside them; and an MoE
    file whose float8 expert stack is read slice by slice."""
    root = tmp_path_factory.mktemp("float8")
    rng = np.random.default_rng(8)
    nan = np.zeros((32, 24), dtype=np.uint8)
    nan[3, 5] = 0x7F  # e4m3fn NaN
    inf = np.full((20, 30), 0x38, dtype=np.uint8)
    inf[0, 0] = 0x7C  # e5m2 +inf
    bf16 = torch.from_numpy(rng.standard_normal((40, 50))).to(torch.bfloat16)
    plain = {
        "big.weight": _float8(rng, torch.float8_e4m3fn, 300, 270),
        "wide.weight": _float8(rng, torch.float8_e5m2, 120, 300),
        "fnuz.weight": _float8(rng, torch.float8_e4m3fnuz, 90, 64),
        "fnuz2.weight": _float8(rng, torch.float8_e5m2fnuz, 64, 96),
        "conv.weight": _float8(rng, torch.float8_e4m3fn, 16, 8, 3, 3),
        "scale.weight": ("F8_E8M0", (64, 32), rng.integers(100, 140, 64 * 32, np.uint8).tobytes()),
        "packed.weight": ("F4", (8, 16), rng.integers(0, 256, 64, np.uint8).tobytes()),
        "nan.weight": ("F8_E4M3", (32, 24), nan.tobytes()),
        "inf.weight": ("F8_E5M2", (20, 30), inf.tobytes()),
        "half.weight": ("BF16", (40, 50), bf16.view(torch.int16).numpy().tobytes()),
    }
    assert SAFETENSORS_DTYPES["F4"][0] == 4  # 8×16 values in 64 bytes
    moe = {
        "model.layers.0.mlp.experts.gate_up_proj": _float8(rng, torch.float8_e4m3fn, 4, 192, 64),
        "model.layers.0.mlp.experts.down_proj": _float8(rng, torch.float8_e4m3fn, 4, 64, 96),
        "model.layers.0.post_attention_layernorm.weight": (
            "F32",
            (64,),
            np.ones(64, dtype=np.float32).tobytes(),
        ),
    }
    return {
        "float8": _write(root / "float8.safetensors", plain),
        "float8-moe": _write(root / "moe.safetensors", moe),
    }


COMMANDS = {
    "auto": ("inspect", "--format", "json"),
    "exact-certified": ("inspect", "--method", "exact", "--certified", "--format", "json"),
    "spectrum": ("spectrum", "--format", "json"),
    "top-k": ("spectrum", "--top-k", "3", "--format", "json"),
    "allocation": ("spectrum", "--hill", "--mp-fit", "--randomize", "--format", "json"),
}
CASES = [("float8", name) for name in COMMANDS] + [
    ("float8-moe", "auto"),
    ("float8-moe", "spectrum"),
]


@pytest.mark.parametrize(("fmt", "command"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_float8_files_without_torch(
    float8_files: dict[str, Path], fmt: str, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [COMMANDS[command][0], str(float8_files[fmt]), *COMMANDS[command][1:]]
    free = _torch_free(args)
    reference = _with_torch(args, monkeypatch)
    _compare(free, reference)
    measured = {layer["name"]: layer["dtype"] for layer in free["layers"]}
    skipped = {item["name"]: item["reason"] for item in free["skipped"]}
    if fmt == "float8":
        assert set(measured.values()) == {
            "float8_e4m3fn",
            "float8_e5m2",
            "float8_e4m3fnuz",
            "float8_e5m2fnuz",
            "bfloat16",
        }
        assert "NaN" in skipped["nan.weight"] and "Inf" in skipped["inf.weight"]
        assert "not supported" in skipped["scale.weight"]
        assert "not supported" in skipped["packed.weight"]
    else:  # each expert of the float8 stack, read by its slice
        assert sum(name.endswith("]") for name in measured) == 8, measured
