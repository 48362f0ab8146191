"""Rendering a normalization plan and its outcome: JSON and the table, from hand-built plans."""

from __future__ import annotations

from pathlib import Path

from render_helpers import printed

from sncli.layers import Skipped
from sncli.normalize import (
    Action,
    LayerOutcome,
    LayerPlan,
    NormalizeMode,
    NormalizeOptions,
    NormalizePlan,
    NormalizeResult,
)
from sncli.numerics.floating import DENSE_ROUNDING
from sncli.render.normalize import normalize_to_dict, plan_short, print_normalize_table

SCALED = LayerPlan(
    name="model.fc.weight_orig",
    short_name="fc.weight_orig",
    kind="linear",
    shape=(4, 3),
    dtype="float32",
    reshape_dim=0,
    sigma_before=4.0,
    scale=0.25,
    action=Action.SCALE,
    output_name="model.fc.weight",
)
KEPT = LayerPlan(
    name="model.head.weight",
    short_name="head.weight",
    kind="linear",
    shape=(2, 4),
    dtype="bfloat16",
    reshape_dim=0,
    sigma_before=0.5,
    scale=1.0,
    action=Action.KEEP,
    output_name="model.head.weight",
)
SKIPPED = LayerPlan(
    name="model.zero.weight",
    short_name="zero.weight",
    kind="linear",
    shape=(3, 3),
    dtype="float32",
    reshape_dim=0,
    sigma_before=float("nan"),
    scale=1.0,
    action=Action.SKIP,
    reason="non-finite weight",
    output_name="model.zero.weight",
)
PLAN = NormalizePlan(
    checkpoint="m.pt",
    options=NormalizeOptions(target=1.0, mode=NormalizeMode.CLIP, bake=True),
    layers=[SCALED, KEPT, SKIPPED],
    skipped=[Skipped("model.fc.bias", "bias"), Skipped("model.head.bias", "bias")],
)
RESULT = NormalizeResult(
    plan=PLAN,
    outputs=[Path("out/m.pt")],
    layers=[
        LayerOutcome(
            name="model.fc.weight_orig",
            output_name="model.fc.weight",
            dtype="float32",
            sigma_before=4.0,
            sigma_after=0.9999999,
            scale=0.25,
            shaves=2,
        )
    ],
    warnings=[],
    verified=True,
)


def test_plan_short_keeps_the_displayed_prefix_off() -> None:
    assert plan_short("model.fc.weight", "model.fc.weight_orig", "fc.weight_orig") == "fc.weight"
    assert plan_short("other.weight", "model.fc.weight_orig", "fc.weight_orig") == "other.weight"


def test_normalize_to_dict_dry_run() -> None:
    data = normalize_to_dict(PLAN, None)
    assert data["checkpoint"] == "m.pt"
    assert data["target"] == 1.0 and data["mode"] == "clip" and data["method"] == "exact"
    assert data["bake"] is True
    assert data["dry_run"] is True and data["outputs"] == [] and data["verified"] is False
    scaled, kept, skipped = data["layers"]
    assert scaled == {
        "name": "model.fc.weight_orig",
        "output_name": "model.fc.weight",
        "kind": "linear",
        "shape": [4, 3],
        "dtype": "float32",
        "action": "scale",
        "sigma_before": 4.0,
        "scale": 0.25,
        "sigma_after_expected": 1.0,
    }
    assert kept["action"] == "keep" and kept["sigma_after_expected"] == 0.5
    assert skipped["sigma_before"] is None and skipped["sigma_after_expected"] is None
    assert skipped["reason"] == "non-finite weight" and "reason" not in kept
    assert data["skipped"] == [
        {"name": "model.fc.bias", "reason": "bias"},
        {"name": "model.head.bias", "reason": "bias"},
    ]


def test_normalize_to_dict_written() -> None:
    data = normalize_to_dict(PLAN, RESULT)
    assert data["dry_run"] is False and data["verified"] is True
    assert data["outputs"] == ["out/m.pt"]
    scaled, kept, _ = data["layers"]
    assert scaled["sigma_after"] == 0.9999999 and scaled["shaves"] == 2
    assert "sigma_after" not in kept and "shaves" not in kept


def test_print_normalize_table_dry_run() -> None:
    text = printed(lambda console: print_normalize_table(PLAN, None, console))
    assert text.splitlines()[0].rstrip() == "Normalization plan (dry run): m.pt"
    assert "σ after (expected)" in text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "weight" in line}
    assert set(rows) == {"fc.weight_orig → fc.weight", "head.weight", "zero.weight"}
    scaled = rows["fc.weight_orig → fc.weight"]
    assert "│ scale " in scaled and "0.25" in scaled and "4 " in scaled
    assert "skip (non-finite weight)" in rows["zero.weight"] and "--" in rows["zero.weight"]
    summary = "1 layer scaled to σ ≤ 1 · 1 kept · 1 skipped · 2 other tensors copied unchanged"
    assert summary in text
    assert text.rstrip().endswith("Dry run: nothing was written.")


def test_print_normalize_table_written() -> None:
    text = printed(lambda console: print_normalize_table(PLAN, RESULT, console))
    assert text.splitlines()[0].rstrip() == "Normalized: m.pt"
    assert "σ after (expected)" not in text and "σ after" in text
    row = next(line for line in text.splitlines() if "fc.weight_orig" in line)
    assert "scale, shaved ×2" in row and "0.9999999" in row
    assert (
        "Wrote out/m.pt; re-opened and verified: largest σ after = 0.9999999 (float64 LAPACK on "
        f"the stored values; σ ≤ target within {DENSE_ROUNDING:g} relative)."
    ) in text
    assert "Dry run" not in text
