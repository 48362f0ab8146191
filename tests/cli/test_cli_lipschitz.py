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


def _onnx_mlp(path: Path) -> Path:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((3, 8)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
        helper.make_node("LSTM", ["x3", "wi", "wh"], ["z"], hidden_size=1, name="rnn"),
    ]
    del nodes[3]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def test_lipschitz_onnx_json_contract(tmp_path: Path) -> None:
    import json

    path = _onnx_mlp(tmp_path / "m.onnx")
    code, out, _ = invoke("lipschitz", str(path), "--format", "json")
    assert code == 0
    data = json.loads(out)
    for key in ("bound", "log10_bound", "certified", "statement", "assumptions", "caveats"):
        assert key in data
    assert data["architecture"] == "graph" and data["certified"] is True
    assert data["outputs"] == [{"name": "y", "bound": data["bound"], "certified": True}]
    assert 0 < data["lower"] <= data["bound"]
    assert {n["op"] for n in data["layers"]} == {"Gemm", "Relu"}
    assert all({"factor", "source", "proven"} <= set(n) for n in data["layers"])
    code, _, err = invoke("lipschitz", str(path), "--fail-above", str(data["bound"] / 2))
    assert code == 3 and "exceeds --fail-above" in err
    code, out, _ = invoke("lipschitz", str(path))
    text = " ".join(out.split())
    assert code == 0 and "path of the largest contribution" in text and "certified" in text


def test_lipschitz_onnx_subprocess(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = _onnx_mlp(tmp_path / "m.onnx")
    result = subprocess.run(
        [sys.executable, "-m", "sncli", "lipschitz", str(path), "--format", "csv"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("name,op,factor,proven")


def test_lipschitz_onnx_bad_graph_is_one_line(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
        helper.make_node("Relu", ["a"], ["b"], name="n2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2])],
    )
    path = tmp_path / "cycle.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    code, out, err = invoke("lipschitz", str(path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "cycle through node 'n1'" in err


def test_lipschitz_onnx_filter_is_ignored_with_a_note(tmp_path: Path) -> None:
    path = _onnx_mlp(tmp_path / "m.onnx")
    code, _, err = invoke("lipschitz", str(path), "--filter", "w1", "--format", "json")
    assert code == 0 and "--filter is ignored for ONNX models" in err


def test_normalize_refuses_onnx(tmp_path: Path) -> None:
    path = _onnx_mlp(tmp_path / "m.onnx")
    code, _, err = invoke("normalize", str(path), "-o", str(tmp_path / "out.onnx"))
    assert code != 0 and not (tmp_path / "out.onnx").exists()
    assert err.count("\n") == 1


def test_lipschitz_onnx_effort_options(tmp_path: Path) -> None:
    """--lower-effort 0 and --chain-seconds 0 give the single power iteration and
    ECLipsE-Fast; both options are refused for state dicts."""
    import json

    path = _onnx_mlp(tmp_path / "m.onnx")
    code, out, _ = invoke(
        "lipschitz", str(path), "--format", "json", "--lower-effort", "0", "--chain-seconds", "0"
    )
    assert code == 0
    data = json.loads(out)
    assert "power iteration" in data["lower_method"] and 0 < data["lower"] <= data["bound"]
    assert data["lower_point"]["output"] == "y"
    assert data["chains"][0]["method"] in ("ECLipsE-Fast", "product of σ (≤ ECLipsE-Fast here)")
    code, out, _ = invoke("lipschitz", str(path), "--format", "json", "--lower-effort", "2")
    assert code == 0 and "multi-start ascent" in json.loads(out)["lower_method"]
    code, _, _ = invoke("lipschitz", str(path), "--lower-effort", "-1")
    assert code == 2
