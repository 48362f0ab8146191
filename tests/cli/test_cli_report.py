"""``sncli report`` and ``--plot``: the HTML file is self-contained (no script, no remote
resource), holds the layer names, works on every sample and on a sharded checkpoint; one test
renders it in a real headless browser when one is installed (``.ci/run`` installs Debian's
chromium-headless-shell)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cli_helpers import invoke

from sncli.checkpoint import open_checkpoint
from sncli.layers import classify

SAMPLE_FILES = [
    "mlp.safetensors",
    "sngan_disc_parametrized.pt",
    "sngan_disc_legacy.pt",
    "lightning_cnn.ckpt",
    "tiny_transformer/model.safetensors.index.json",
]


class _Resources(HTMLParser):
    """Every tag name and every URL-valued attribute in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "data", "action") and value:
                self.urls.append(value)


def _check_page(path: Path, names: list[str]) -> str:
    text = path.read_text(encoding="utf-8")
    parser = _Resources()
    parser.feed(text)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    # fragments and inline data only (matplotlib embeds raster images as data: URIs)
    assert all(url.startswith(("#", "data:")) for url in parser.urls), parser.urls
    assert not re.search(r"url\((?!#)", text)  # no CSS fetches
    for name in names:
        assert name in text
    return text


@pytest.mark.parametrize("sample", SAMPLE_FILES)
def test_report_on_every_sample(samples: Path, tmp_path: Path, sample: str) -> None:
    path = samples / sample
    out = tmp_path / "report.html"
    code, _, err = invoke("report", str(path), "-o", str(out), "-q")
    assert code == 0, err
    with open_checkpoint(path) as ckpt:
        names = [
            layer.short_name for layer in classify(ckpt).layers if layer.kind.value != "embedding"
        ]
    text = _check_page(out, names)
    assert text.count("<svg") >= 2  # σ per layer and the Lipschitz factors
    assert "sncli report" in text  # the command that produced it


def test_report_with_a_second_checkpoint_adds_the_diff(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "change.html"
    code, _, err = invoke(
        "report",
        str(samples / "mlp.safetensors"),
        str(samples / "mlp_finetuned.safetensors"),
        "-o",
        str(out),
        "-q",
    )
    assert code == 0, err
    text = _check_page(out, ["2.weight", "4.weight"])
    # σ, Lipschitz factors, α per layer, the diff (the MLP has no repeated blocks: no heat maps)
    assert "Compared with" in text and text.count("<svg") == 4
    # σ(A), σ(B) and ‖B−A‖₂ of 2.weight are lower bounds under auto, marked as inspect marks
    # them; the intruders column is there (issue 28)
    assert "<td>≥ 1.1314</td><td>≥ 1.13126</td><td>≥ 0.3</td>" in text
    assert "intruders (top-10)" in text


def test_report_refuses_to_overwrite_without_force(mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    out.write_text("keep me")
    code, _, err = invoke("report", str(mlp_path), "-o", str(out))
    assert code == 1 and "--force" in err
    assert out.read_text() == "keep me"
    code, _, _ = invoke("report", str(mlp_path), "-o", str(out), "--force", "-q")
    assert code == 0 and out.read_text().startswith("<!doctype html>")


def test_plot_option_writes_figures(mlp_path: Path, samples: Path, tmp_path: Path) -> None:
    code, _, _ = invoke("inspect", str(mlp_path), "--plot", str(tmp_path / "s.svg"), "-q")
    assert code == 0 and (tmp_path / "s.svg").read_bytes().startswith(b"<?xml")
    code, _, _ = invoke(
        "diff",
        str(mlp_path),
        str(samples / "mlp_finetuned.safetensors"),
        "--plot",
        str(tmp_path / "d.png"),
        "-q",
    )
    assert code == 0 and (tmp_path / "d.png").read_bytes().startswith(b"\x89PNG")
    code, _, _ = invoke("lipschitz", str(mlp_path), "--plot", str(tmp_path / "l.pdf"), "-q")
    assert code == 0 and (tmp_path / "l.pdf").read_bytes().startswith(b"%PDF")
    code, _, _ = invoke("inspect", str(mlp_path), "--plot", str(tmp_path / "x.gif"))
    assert code == 2 and not (tmp_path / "x.gif").exists()


def _browser() -> str | None:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    for candidate in ("/usr/lib/chromium/chromium-headless-shell", "/usr/lib/chromium/chromium"):
        if Path(candidate).exists():
            return candidate
    return None


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium installed")
def test_report_renders_in_a_headless_browser(samples: Path, tmp_path: Path) -> None:
    """Screenshot not blank; the DOM the browser built holds the layer names; no request left
    the machine (the page is loaded from file:// with the network blocked)."""
    out = tmp_path / "report.html"
    code, _, err = invoke(
        "report",
        str(samples / "tiny_transformer" / "model.safetensors.index.json"),
        "-o",
        str(out),
        "-q",
    )
    assert code == 0, err
    browser = _browser()
    assert browser is not None
    common = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--proxy-server=127.0.0.1:9",  # any remote fetch would fail, not leave the machine
        "--proxy-bypass-list=<-loopback>",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri()],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert shot.exists() and shot.stat().st_size > 5000
    from PIL import Image  # matplotlib's dependency

    with Image.open(shot) as image:
        colours = image.convert("L").getextrema()
    assert colours[0] < 100 < colours[1]  # dark text on a light page: not blank
    dom = subprocess.run(
        [*common, "--dump-dom", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    ).stdout
    assert "model.layers.1.self_attn.q_proj.weight" in dom
    assert "<script" not in dom


def test_spectrum_plot_options(mlp_path: Path, tmp_path: Path) -> None:
    code, _, err = invoke(
        "spectrum", str(mlp_path), "--plot", str(tmp_path / "a.svg"), "--metric", "alpha", "-q"
    )
    assert code == 0, err
    assert (tmp_path / "a.svg").read_bytes().startswith(b"<?xml")
    code, _, err = invoke(
        "spectrum", str(mlp_path), "--plot", str(tmp_path / "e.png"), "--layer", "2.weight", "-q"
    )
    assert code == 0 and (tmp_path / "e.png").read_bytes().startswith(b"\x89PNG")
    code, _, _ = invoke(
        "spectrum", str(mlp_path), "--plot", str(tmp_path / "x.png"), "--layer", "nope"
    )
    assert code == 2 and not (tmp_path / "x.png").exists()
    code, _, _ = invoke(
        "spectrum", str(mlp_path), "--plot", str(tmp_path / "x.png"), "--metric", "bogus"
    )
    assert code == 2
    code, _, _ = invoke("spectrum", str(mlp_path), "--layer", "2.weight")
    assert code == 2


def test_report_on_onnx_shows_the_graph_bound(tmp_path: Path) -> None:
    """An ONNX model's report carries `lipschitz`'s graph bound (certified, per output, lower
    bound, path), not the conditional product of its layers' σ."""
    import json

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w"], ["g"], transB=1),
            helper.make_node("Add", ["x", "g"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", f, [1, 3])],
        [helper.make_tensor_value_info("y", f, [1, 3])],
        [numpy_helper.from_array(0.5 * np.eye(3, dtype=np.float32), "w")],
    )
    path = tmp_path / "residual.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    out = tmp_path / "r.html"
    code, _, err = invoke("report", str(path), "-o", str(out), "-q")
    assert code == 0, err
    page = out.read_text()
    code, text, _ = invoke("lipschitz", str(path), "--format", "json")
    data = json.loads(text)
    assert data["certified"] and data["lower"] <= data["bound"]
    assert "Lipschitz bound over the graph" in page and "conditional" not in page
    assert "L ≤ 1.5 over the graph, certified; lower bound found 1.5" in page
    assert "Path of the largest contribution" in page and "<td>Add</td>" in page


def test_report_options_reach_the_page(mlp_path: Path, tmp_path: Path) -> None:
    """--filter/--exclude, --top-k, --workers and --sections: only the chosen parts and layers."""
    out = tmp_path / "part.html"
    code, _, err = invoke(
        "report",
        str(mlp_path),
        "-o",
        str(out),
        "--filter",
        r"^[02]\.",
        "--exclude",
        r"^0\.",
        "--top-k",
        "2",
        "--tol",
        "1e-6",
        "--workers",
        "1",
        "--sections",
        "spectrum",
        "-q",
    )
    assert code == 0, err
    text = out.read_text(encoding="utf-8")
    assert "<h2>Spectra</h2>" in text and "Lipschitz bound" not in text
    assert "<td>2.weight</td>" in text or ">2.weight<" in text
    assert ">0.weight<" not in text and ">4.weight<" not in text
    code, _, err = invoke("report", str(mlp_path), "-o", str(out), "--sections", "figures")
    assert code == 2 and "Invalid value" in err and "--sections" in err
    assert out.read_text(encoding="utf-8") == text  # nothing written on a usage error


def test_report_on_an_attention_model_shows_the_refusal_not_a_chart(
    samples: Path, tmp_path: Path
) -> None:
    """Issue 28: a product that is no bound (attention) is not drawn; the statement is whole;
    the caption mentions conv ticks only when there are convs; the legends sit beside the axes."""
    import sncli
    from sncli.render.html import report_html

    index = samples / "tiny_transformer" / "model.safetensors.index.json"
    out = tmp_path / "report.html"
    code, _, err = invoke("report", str(index), "-o", str(out), "-q")
    assert code == 0, err
    text = out.read_text(encoding="utf-8")
    statement = sncli.lipschitz_report(index).statement()
    assert len(statement) > 400 and not statement.endswith("…")
    assert escape(statement) in text  # whole, not cut at 400 characters
    assert "The chart of the running product is left out" in text
    assert "Lipschitz factors" not in text  # no chart title
    assert "red ticks" not in text  # no convs
    # with convs (the Lightning CNN) the chart and the red-tick caption are there
    model = sncli.build_report(samples / "lightning_cnn.ckpt")
    page = report_html(model, {"lipschitz": "<svg></svg>"})
    assert "red ticks" in page and "left out" not in page


def test_report_on_a_dynamic_onnx_model_takes_input_shape(tmp_path: Path) -> None:
    """The graph bound needs static shapes: without --input-shape the page says why (and which
    option), with it the certified bound is there."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = np.full((2, 3, 1, 1), 0.5, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "dynamic.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    out = tmp_path / "r.html"
    code, _, err = invoke("report", str(path), "-o", str(out), "-q")
    assert code == 0, err
    assert "--input-shape x=1x3xHxW" in out.read_text(encoding="utf-8")
    code, _, err = invoke(
        "report", str(path), "-o", str(out), "-q", "--force", "--input-shape", "x=1x3x4x4"
    )
    assert code == 0, err
    assert "over the graph, certified" in out.read_text(encoding="utf-8")
