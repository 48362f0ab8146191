"""A small training run for the track tests: copies of ``sample_models/mlp.safetensors`` with
perturbations whose effect is known, written as ``step_<N>.safetensors`` in a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MLP = REPO / "sample_models" / "mlp.safetensors"
STEPS = (0, 100, 200, 300)
#: 2.weight is scaled by these factors (σ_max scales exactly with them); 0.weight never moves;
#: 4.weight gets a rank-one update growing with the step.
SCALES = (1.0, 1.1, 1.25, 0.9)


def write_step(folder: Path, index: int, step: int | None = None) -> Path:
    """Checkpoint ``index`` of the run (its step ``STEPS[index]`` unless given)."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(MLP))
    weights["2.weight"] = (weights["2.weight"] * np.float32(SCALES[index % len(SCALES)])).astype(
        np.float32
    )
    rows, cols = weights["4.weight"].shape
    u = np.linspace(-1.0, 1.0, rows, dtype=np.float32)
    v = np.cos(np.arange(cols, dtype=np.float32) / 7).astype(np.float32)
    weights["4.weight"] = (weights["4.weight"] + np.float32(0.02 * index) * np.outer(u, v)).astype(
        np.float32
    )
    path = folder / f"step_{STEPS[index] if step is None else step}.safetensors"
    save_file(weights, str(path))
    return path


def make_run(folder: Path, count: int = len(STEPS)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_step(folder, index) for index in range(count)]


def numpy_sigma(matrix: np.ndarray) -> float:
    """The independent reference: float64 LAPACK SVD."""
    return float(np.linalg.svd(matrix.astype(np.float64), compute_uv=False)[0])
