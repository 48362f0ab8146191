"""``sncli lipschitz`` on the command line; the engine is tested in tests/test_lipschitz.py."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import invoke


def test_fail_above_refuses_a_non_bound(transformer_index_path: Path) -> None:
    code, _, err = invoke("lipschitz", str(transformer_index_path), "--fail-above", "1e30")
    assert code == 3 and "not a Lipschitz bound" in err


def test_quiet_hides_the_input_size_note(mlp_path: Path) -> None:
    args = ("lipschitz", str(mlp_path), "--input-size", "8x8", "--format", "json")
    code, _, err = invoke(*args)
    assert code == 0
    assert err == (
        "sncli: --input-size is ignored with zero padding: the bound holds at every input size\n"
    )
    code, _, err = invoke(*args, "-q")
    assert code == 0 and err == ""
