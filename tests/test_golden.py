"""Golden files: today's CLI output on the committed sample models, pinned byte for byte.

Every case runs ``sncli`` through ``typer.testing.CliRunner`` and compares its stdout, its
stderr, and for ``normalize -o`` the sha256 of every written file and the index json, with the
files in ``tests/golden/<command>/``. A changed byte fails, with the first differing lines.

Regenerate after an intended change of output (then review ``git diff tests/golden``)::

    SNCLI_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

Paths: each case runs in its own temporary folder holding a ``sample_models`` symlink to the
repository's samples, so the checkpoint is given as ``sample_models/...`` and outputs as
``out/...``: no absolute path reaches the output, which is the same in any clone on any machine
(relative outputs also keep Rich's wrapping of the normalize table independent of the folder).

Determinism, measured on the machine that wrote the files (torch 2.13.0 CPU, MKL, AMD EPYC):

* Every output is byte-identical across repeated runs, in-process and as a subprocess, and
  with ``inspect --workers`` 1, 2, 3, 4 or the default (inspect measures single-threaded).
* ``lipschitz`` and ``normalize`` run float64 LAPACK/BLAS on torch's intra-op threads: with 2
  or 4 threads instead of 1, their float fields change in the last bits (at most 9e-16
  relative; log10 values and shares near 0 by at most 2e-15 absolute). Tables and written files
  did not change. So these tests run single-threaded (the ``single_torch_thread`` fixture).
* A different MKL code path (what another CPU model may take; simulated with ``MKL_CBWR=AVX2``
  and ``MKL_CBWR=COMPATIBLE``) changed JSON/CSV floats in most cases (51 of 58): float64
  values by at most 9e-16 relative (2e-15 absolute for log10 values and shares), the float32
  iterative σ of ``inspect`` by up to 3e-11 relative (block Lanczos) and 9.1e-7 (``power``,
  whose stopping rule is a 1e-6 relative change; its iteration counts moved by 1), error
  estimates by up to 1.2e-9 absolute. Other integers, strings, tables, stderr and written files
  stayed identical.

Hence: where this machine's math library computes exactly like the one that wrote the golden
files (``numerics.txt``: the bits of a few float64/float32 BLAS and LAPACK results), every
comparison is exact. Elsewhere JSON and CSV must still match exactly except for the float fields
in TOLERANCES, compared within the tolerances there; ``test_numerics_fingerprint`` is then
skipped with a note saying so. Tables, stderr and written files are always compared exactly.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sncli.cli import app

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
FINGERPRINT = GOLDEN / "numerics.txt"
UPDATE = os.environ.get("SNCLI_UPDATE_GOLDEN") == "1"

MLP = "sample_models/mlp.safetensors"
DISC = "sample_models/sngan_disc_parametrized.pt"
LEGACY = "sample_models/sngan_disc_legacy.pt"
LIGHTNING = "sample_models/lightning_cnn.ckpt"
TRANSFORMER = "sample_models/tiny_transformer/model.safetensors.index.json"
SAMPLES = {
    "mlp": MLP,
    "disc": DISC,
    "legacy": LEGACY,
    "lightning": LIGHTNING,
    "transformer": TRANSFORMER,
}

#: Environment that would change Rich's output (width, colour); removed for every case.
TERMINAL_ENV = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")

Tolerance = tuple[float, float]  # (relative, absolute), as math.isclose
#: float64 results: a few ulps (measured ≤ 9e-16 relative).
FLOAT64: Tolerance = (1e-12, 0.0)
#: log10 values and shares of log L, which pass through 0 (measured ≤ 2e-15 absolute).
LOG: Tolerance = (0.0, 1e-13)
#: Iterative values of inspect (float32 block Lanczos, power iteration): measured ≤ 9.1e-7.
ITERATIVE: Tolerance = (1e-5, 0.0)
#: Error estimates of iterative methods are rounding noise once converged (≤ 1.2e-9 absolute).
ESTIMATE: Tolerance = (0.0, 1e-8)


def _sigma_tolerance(record: dict[str, Any]) -> Tolerance:
    """inspect: float64 accuracy for exact layers, the method's own accuracy for the rest."""
    return FLOAT64 if record.get("bound") == "exact" else ITERATIVE


def _iterations_tolerance(record: dict[str, Any]) -> Tolerance | None:
    """power stops once σ changes by less than --tol, which rounding can move by an iteration
    (measured: 80 against 79, 41 against 40); other methods' counts are compared exactly."""
    return (0.0, 2.0) if record.get("method") == "power" else None


def _spectrum_tolerance(record: dict[str, Any]) -> Tolerance:
    """spectrum: float64 spectra and what is computed from them (α from sums of logs: measured
    ≤ 2e-14 between a vectorized and a plain-loop fit); top-K Lanczos values to their tolerance."""
    return (1e-7, 0.0) if record.get("bound") == "lower" else (1e-10, 0.0)


def _small_sigma_tolerance(record: dict[str, Any]) -> Tolerance:
    """σ_min (and σ_max/σ_min) from the float64 Gram matrix: exact to ε₆₄·(σ₁/σ_min)² relative
    (numerics/svd.py), which another BLAS's Gram rounding moves by that much: measured 2.7e-10
    at σ₁/σ_min = 2654 (tiny_transformer v_proj, NumPy/OpenBLAS against torch/MKL); allowed
    4·ε₆₄·κ², at least the exact spectrum's 1e-10."""
    rel, absolute = _spectrum_tolerance(record)
    try:
        kappa = float(record.get("condition_number") or 0.0)
    except ValueError:
        kappa = 0.0
    return max(rel, 4 * 2.0**-52 * kappa * kappa), absolute


#: Fields that may differ on a machine whose math library rounds differently, and how
#: much; per command and field name, or a function of the layer's record (JSON object or CSV row).
TOLERANCES: dict[str, dict[str, Tolerance | Callable[[dict[str, Any]], Tolerance | None]]] = {
    "inspect": {
        "sigma": _sigma_tolerance,
        "iterations": _iterations_tolerance,
        "sigma_effective": _sigma_tolerance,
        "sigma_upper": FLOAT64,
        "sigma_stored_estimate": FLOAT64,
        "error_estimate": ESTIMATE,
    },
    "lipschitz": {
        "sigma": FLOAT64,
        "sigma_lower": FLOAT64,
        "sigma_upper": FLOAT64,
        "reshape_sigma": FLOAT64,
        "bound": FLOAT64,
        "log10_sigma": LOG,
        "share": LOG,
        "running_log10": LOG,
        "log10_bound": LOG,
    },
    "spectrum": {
        **{
            name: _spectrum_tolerance
            for name in (
                "sigma_max",
                "frobenius",
                "nuclear",
                "stable_rank",
                "effective_rank",
                "rank_tolerance",
                "lambda_max",
                "alpha",
                "xmin",
                "ks_distance",
                "alpha_weighted",
                "entropy",
                "mp_edge",
            )
        },
        "sigma_min": _small_sigma_tolerance,
        "condition_number": _small_sigma_tolerance,
        "log_norm": LOG,
        "log_spectral_norm": LOG,
        "log_alpha_norm": (1e-12, 1e-13),  # α·log10 λ summed: 7e-14 relative on Intel Xeon
        "error_estimate": ESTIMATE,
    },
    "diff": {
        "sigma_a": _sigma_tolerance,
        "sigma_b": _sigma_tolerance,
        "delta_sigma": lambda record: (
            FLOAT64 if record.get("delta_bound") == "exact" else ITERATIVE
        ),
        "relative": ITERATIVE,
        "delta_frobenius": FLOAT64,
        "relative_frobenius": FLOAT64,
        "subspace_cosines": (0.0, 1e-9),
        "min_subspace_cosine": (0.0, 1e-9),
        # Wedin's residual over gap: rounding-sized residuals (~1e-10 here) differ in any bit
        "subspace_error": (0.0, 1e-9),
    },
    "normalize": {
        "sigma_before": FLOAT64,
        "scale": FLOAT64,
        "sigma_after_expected": FLOAT64,
        "sigma_after": FLOAT64,
    },
}


@dataclass(frozen=True)
class Case:
    """One CLI invocation; its stdout is pinned in ``tests/golden/<command>/<name>.<format>``."""

    name: str
    args: tuple[str, ...]

    @property
    def command(self) -> str:
        return self.args[0]

    @property
    def format(self) -> str:
        return self.args[self.args.index("--format") + 1] if "--format" in self.args else "table"

    @property
    def id(self) -> str:
        return f"{self.command}-{self.name}-{self.format}"

    @property
    def stdout_file(self) -> Path:
        extension = {"json": "json", "csv": "csv", "table": "txt"}[self.format]
        return GOLDEN / self.command / f"{self.name}.{extension}"

    @property
    def writes(self) -> bool:
        return "-o" in self.args

    def golden(self, what: str) -> Path:
        """A further golden file of this case: ``stderr``, ``files`` or ``index.json``."""
        return self.stdout_file.with_name(f"{self.stdout_file.name}.{what}")


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, command_line: str) -> None:
        cases.append(Case(name, tuple(command_line.split())))

    # inspect: every sample in both formats with the default method, then option variants.
    for fmt in ("json", "csv"):
        for sample, path in SAMPLES.items():
            add(sample, f"inspect {path} --format {fmt}")
        add("mlp-power", f"inspect {MLP} --method power --format {fmt}")
        add("disc-exact-certified", f"inspect {DISC} --method exact --certified --format {fmt}")
    add("transformer-folder", "inspect sample_models/tiny_transformer --format json")
    add("mlp-dense", f"inspect {MLP} --method dense --format json")
    add(
        "legacy-lanczos-no-warm-start",
        f"inspect {LEGACY} --method lanczos --no-warm-start --format json",
    )
    add("lightning-power-seed", f"inspect {LIGHTNING} --method power --seed 7 --format csv")
    add(
        "transformer-filter-top",
        rf"inspect {TRANSFORMER} --filter layers\.1\. --exclude k_proj --top 3 --format json",
    )
    add("transformer-sort-size", f"inspect {TRANSFORMER} --sort size --reverse --format csv")
    add("transformer-sort-name", f"inspect {TRANSFORMER} --sort name --reverse --format json")

    # lipschitz: every sample in both formats (default: dense σ, operator-norm conv bound).
    # --certified in both formats on the Lightning CNN (conv + BatchNorm + linear), in JSON only
    # on the SN-GAN (SN layers): its 64×64-grid conv bound is the slowest thing here.
    for fmt in ("json", "csv"):
        for sample, path in SAMPLES.items():
            add(sample, f"lipschitz {path} --format {fmt}")
        add("lightning-certified", f"lipschitz {LIGHTNING} --certified --format {fmt}")
        add("disc-conv-reshape", f"lipschitz {DISC} --conv reshape --format {fmt}")
    add("disc-certified", f"lipschitz {DISC} --certified --format json")
    add(
        "disc-circular-32x32",
        f"lipschitz {DISC} --padding circular --input-size 32x32 --format json",
    )
    add("mlp-method-exact", f"lipschitz {MLP} --method exact --format json")

    # spectrum: every sample in JSON, two in CSV, then top-K, sorting and filters.
    for sample, path in SAMPLES.items():
        add(sample, f"spectrum {path} --format json")
    for sample in ("mlp", "lightning"):
        add(sample, f"spectrum {SAMPLES[sample]} --format csv")
    add("transformer-top-k", f"spectrum {TRANSFORMER} --top-k 5 --format json")
    add(
        "transformer-filter-sort-alpha",
        rf"spectrum {TRANSFORMER} --filter self_attn --sort alpha --top 4 --format csv",
    )

    # diff: the sample MLP against its pretend fine-tune, in every format; the same file twice.
    tuned = "sample_models/mlp_finetuned.safetensors"
    for fmt in ("json", "csv", "table"):
        add("mlp-finetuned", f"diff {MLP} {tuned} --format {fmt}")
    add(
        "mlp-finetuned-exact-fail-above",
        f"diff {MLP} {tuned} -m exact --fail-above 0.3 --format json",
    )
    add("mlp-same", f"diff {MLP} {MLP} --format json")

    # normalize: the plan (--dry-run) in json, and real writes in json and table (the formats
    # normalize has; csv is refused), whose written files are pinned by sha256.
    normalize = {
        "mlp": f"{MLP} -o out/mlp.safetensors",
        "mlp-clip": f"{MLP} -o out/mlp.safetensors --mode clip --target 1.2",
        "disc": f"{DISC} -o out/disc.pt",
        "disc-bake": f"{DISC} -o out/disc.pt --bake",
        "legacy-bake": f"{LEGACY} -o out/legacy.pt --bake",
        "lightning": f"{LIGHTNING} -o out/lightning.ckpt",
        "transformer": f"{TRANSFORMER} -o out/tiny_transformer",
    }
    for name, options in normalize.items():
        path, _, _, *extra = options.split()  # the dry run writes nothing: no -o
        add(f"{name}-dry-run", f"normalize {path} {' '.join(extra)} --dry-run --format json")
    for fmt in ("json", "table"):
        for name, options in normalize.items():
            add(name, f"normalize {options} --format {fmt}")
    return cases


CASES = _cases()


def run_case(case: Case, workdir: Path) -> tuple[int, bytes, bytes]:
    """Invoke the CLI for ``case`` with ``workdir`` as the current folder."""
    (workdir / "sample_models").symlink_to(REPO / "sample_models", target_is_directory=True)
    (workdir / "out").mkdir()
    env: dict[str, str | None] = dict.fromkeys((*TERMINAL_ENV, "SNCLI_DEBUG"))
    before = Path.cwd()
    os.chdir(workdir)
    try:
        result = CliRunner().invoke(app, list(case.args), env=env)
    finally:
        os.chdir(before)
    return result.exit_code, result.stdout_bytes, result.stderr_bytes


def written_files(out: Path) -> bytes:
    """``sha256  size  path`` of every file under ``out``, sorted by path."""
    lines = []
    for file in sorted(p for p in out.rglob("*") if p.is_file() or p.is_symlink()):
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        lines.append(f"{digest}  {len(data):>8}  {file.relative_to(out.parent).as_posix()}\n")
    return "".join(lines).encode()


def numerics_fingerprint() -> bytes:
    """The bits of small BLAS/LAPACK results like those sncli computes, on the current threads.

    Equal on two machines: their math libraries (very likely) round sncli's work alike too.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(256, 128, generator=generator, dtype=torch.float64)
    gram = a.T @ a
    values = {
        "gemm float64": (a @ a.T).sum(),
        "gemm float32": (a.float() @ a.float().T).sum(),
        "eigvalsh": torch.linalg.eigvalsh(gram)[-1],
        "eigh": torch.linalg.eigh(gram).eigenvectors[:, -1].abs().sum(),
        "svdvals": torch.linalg.svdvals(a)[0],
        "qr": torch.linalg.qr(a).R.diagonal().abs().sum(),
        "cholesky": torch.linalg.cholesky(gram).diagonal().sum(),
        "vector_norm float32": torch.linalg.vector_norm(a.float()),
    }
    lines = [f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}"]
    lines += [f"{name}: {float(value).hex()}" for name, value in values.items()]
    # NumPy's OpenBLAS picks its kernels by CPU (DYNAMIC_ARCH): the NumPy kernels of
    # safetensors/GGUF/ONNX files round differently on AMD EPYC and Intel Xeon while torch's
    # MKL results above agree, so the fingerprint holds NumPy's own results too.
    import numpy as np
    import scipy.linalg

    from sncli.run.blas import numpy_blas_threads

    with numpy_blas_threads(1):
        x = a.numpy()
        x_gram = x.T @ x
        numpy_values = {
            "numpy gemm float64": (x @ x.T).sum(),
            "numpy gemm float32": (x.astype(np.float32) @ x.astype(np.float32).T).sum(),
            "numpy eigvalsh": np.linalg.eigvalsh(x_gram)[-1],
            "numpy svd": np.linalg.svd(x, compute_uv=False)[0],
            "scipy eigh": np.abs(scipy.linalg.eigh(x_gram)[1][:, -1]).sum(),
            "numpy gemv float32": (x.astype(np.float32) @ x[0].astype(np.float32)).sum(),
        }
    lines.append(f"numpy {np.__version__}, scipy {scipy.__version__}")
    lines += [f"{name}: {float(value).hex()}" for name, value in numpy_values.items()]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def exact_numerics(single_torch_thread: None) -> bool:  # noqa: ARG001 (wanted for its effect)
    """Whether this machine computes like the one that wrote the golden files."""
    fingerprint = numerics_fingerprint()
    if UPDATE:
        FINGERPRINT.parent.mkdir(parents=True, exist_ok=True)
        FINGERPRINT.write_bytes(fingerprint)
    return FINGERPRINT.exists() and FINGERPRINT.read_bytes() == fingerprint


def _json_leaves(
    node: Any, record: dict[str, Any], field: str | None = None
) -> Iterator[tuple[str | None, Any, dict]]:
    """(field, value, enclosing layer record) for every scalar, in document order; the items of
    a list of numbers (``subspace_cosines``) count as the list's field."""
    if isinstance(node, dict):
        if "bound" in node:
            record = node
        for key, value in node.items():
            if isinstance(value, dict | list):
                yield from _json_leaves(value, record, key if isinstance(value, list) else None)
            else:
                yield key, value, record
    else:
        for value in node:
            if isinstance(value, dict | list):
                yield from _json_leaves(value, record)
            else:
                yield field, value, record


def _leaves(text: str, fmt: str) -> list[tuple[str | None, Any, dict]] | None:
    """The scalars of a JSON or CSV text as sncli writes it; None if not written that way."""
    if fmt == "json":
        data = json.loads(text)
        if json.dumps(data, indent=2) + "\n" != text:
            return None
        return list(_json_leaves(data, {}))
    rows = list(csv.reader(io.StringIO(text)))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    if not rows or buffer.getvalue() != text:
        return None
    leaves: list[tuple[str | None, Any, dict]] = [(None, name, {}) for name in rows[0]]
    for row in rows[1:]:
        record = dict(zip(rows[0], row, strict=False))
        leaves += [(field, value, record) for field, value in zip(rows[0], row, strict=False)]
        leaves.append((None, len(row), {}))
    return leaves


def _close(field: str | None, a: Any, e: Any, case: Case, record: dict[str, Any]) -> bool:
    tolerance = TOLERANCES[case.command].get(field or "")
    if tolerance is None or a in (None, "") or e in (None, ""):
        return False
    if callable(tolerance):
        tolerance = tolerance(record)
        if tolerance is None:
            return False
    try:
        a, e = float(a), float(e)
    except (TypeError, ValueError):
        return False
    return math.isclose(a, e, rel_tol=tolerance[0], abs_tol=tolerance[1])


def within_tolerance(actual: bytes, expected: bytes, case: Case) -> bool:
    """Equal except for the TOLERANCES float fields, each within its tolerance."""
    if case.format not in ("json", "csv"):
        return False
    try:
        got = _leaves(actual.decode(), case.format)
        want = _leaves(expected.decode(), case.format)
    except ValueError:  # not UTF-8, not JSON
        return False
    if got is None or want is None or len(got) != len(want):
        return False
    for (field, a, record), (field_e, e, _) in zip(got, want, strict=True):
        same = field == field_e and type(a) is type(e) and a == e
        if not same and not (field == field_e and _close(field, a, e, case, record)):
            return False
    return True


def compare(actual: bytes, path: Path, case: Case | None = None, exact: bool = True) -> None:
    """Byte comparison with a golden file; rewrite it instead when SNCLI_UPDATE_GOLDEN=1.

    With ``case`` and ``exact=False``, the float fields in TOLERANCES may differ within their
    tolerance (and such a difference does not rewrite the file).
    """
    expected = path.read_bytes() if path.exists() else None
    if expected == actual:
        return
    tolerant = not exact and case is not None and case.command in TOLERANCES
    if expected is not None and tolerant and within_tolerance(actual, expected, case):
        return
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual)
        return
    if expected is None:
        pytest.fail(f"{path.relative_to(REPO)} is missing; run with SNCLI_UPDATE_GOLDEN=1")
    diff = difflib.unified_diff(
        expected.decode("utf-8", "replace").splitlines(),
        actual.decode("utf-8", "replace").splitlines(),
        fromfile=f"{path.relative_to(REPO)} (golden)",
        tofile="actual",
        lineterm="",
        n=2,
    )
    how = "beyond the float tolerances" if tolerant else "compared exactly"
    pytest.fail(
        f"output differs from {path.relative_to(REPO)} ({how}); "
        "SNCLI_UPDATE_GOLDEN=1 rewrites it:\n" + "\n".join(list(diff)[:40]),
        pytrace=False,
    )


def compare_optional(actual: bytes, path: Path) -> None:
    """Like ``compare`` for output that is usually empty: no file stands for empty."""
    if UPDATE and not actual:
        path.unlink(missing_ok=True)
        return
    if not UPDATE and not path.exists():
        assert actual == b"", f"unexpected output (no {path.relative_to(REPO)}): {actual!r}"
        return
    compare(actual, path)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_golden(case: Case, tmp_path: Path, exact_numerics: bool) -> None:
    code, stdout, stderr = run_case(case, tmp_path)
    assert code == 0, stderr.decode()
    for text in (stdout, stderr):
        assert str(tmp_path).encode() not in text and str(REPO).encode() not in text
    compare(stdout, case.stdout_file, case, exact=exact_numerics)
    compare_optional(stderr, case.golden("stderr"))
    if case.writes:
        out = tmp_path / "out"
        compare(written_files(out), case.golden("files"))
        for index in sorted(out.rglob("*.index.json")):
            compare(index.read_bytes(), case.golden("index.json"))


def test_numerics_fingerprint_file_has_every_line() -> None:
    """The recorded fingerprint names what :func:`numerics_fingerprint` computes now: a line
    added to the function without re-recording would make every machine compare tolerantly."""

    def labels(text: str) -> list[str]:
        return [line.split(":")[0] for line in text.splitlines() if ":" in line]

    assert labels(FINGERPRINT.read_text()) == labels(numerics_fingerprint().decode()), (
        "tests/golden/numerics.txt is stale: run with SNCLI_UPDATE_GOLDEN=1 (it rewrites the "
        "golden files from this machine's results too)"
    )


def test_numerics_fingerprint(exact_numerics: bool) -> None:
    """Says (as a skip) when the golden floats are compared within tolerances, not exactly."""
    assert FINGERPRINT.exists(), "run with SNCLI_UPDATE_GOLDEN=1 to record it"
    if not exact_numerics:
        pytest.skip(
            f"this machine's BLAS/LAPACK results differ from {FINGERPRINT.relative_to(REPO)}: "
            "golden JSON/CSV floats compared within TOLERANCES, not byte for byte"
        )


#: 0.weight's σ in tests/golden/lipschitz/mlp.json, edited by the cases below.
MLP_SIGMA = '"sigma": 1.3742452452567406,'


@pytest.mark.parametrize(
    ("case_id", "old", "new", "accepted"),
    [
        ("lipschitz-mlp-json", MLP_SIGMA, '"sigma": 1.3742452452567413,', True),
        ("lipschitz-mlp-json", MLP_SIGMA, '"sigma": 1.374245245356741,', False),
        ("lipschitz-mlp-json", '"certified": true', '"certified": false', False),
        ("lipschitz-mlp-json", '\n  "bound"', '\n "bound"', False),
        ("inspect-mlp-csv", ",1.1313961300361,", ",1.1313961310361,", True),
        ("inspect-mlp-csv", ",1.3742452452553662,", ",1.3742452452653662,", False),
        ("inspect-mlp-csv", ",14,", ",15,", False),
        ("inspect-mlp-csv", "\n", "\r\n", False),
        ("spectrum-mlp-json", '"alpha": 8.466455609483933,', '"alpha": 8.466455609484933,', True),
        ("spectrum-mlp-json", '"alpha": 8.466455609483933,', '"alpha": 8.466455619483933,', False),
        ("spectrum-mlp-json", '"numerical_rank": 128,', '"numerical_rank": 127,', False),
    ],
)
def test_tolerant_comparison(case_id: str, old: str, new: str, accepted: bool) -> None:
    """The comparison used where floats may differ still fails on anything but rounding."""
    case = next(case for case in CASES if case.id == case_id)
    expected = case.stdout_file.read_bytes()
    assert old.encode() in expected
    changed = expected.replace(old.encode(), new.encode(), 1)
    assert within_tolerance(changed, expected, case) is accepted


def test_golden_files_have_cases() -> None:
    """Every golden file belongs to a case (a renamed case must not leave a stale file)."""
    known = {FINGERPRINT}
    for case in CASES:
        known |= {
            case.stdout_file,
            *(case.golden(what) for what in ("stderr", "files", "index.json")),
        }
    # sncli track's goldens need a run folder built per test: tests/cli/test_cli_track.py
    known |= set((GOLDEN / "track").glob("*"))
    # spectrum/track with --hill, --mp-fit, --randomize, --group: tests/cli/test_cli_allocation.py
    known |= set((GOLDEN / "allocation").glob("*"))
    stale = [p.relative_to(REPO) for p in GOLDEN.rglob("*") if p.is_file() and p not in known]
    assert not stale, f"golden files of no case (delete them): {stale}"
    assert len({case.id for case in CASES}) == len(CASES)
