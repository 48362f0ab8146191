"""Shared by the CLI tests: run a command in-process, and the reference σ."""

from __future__ import annotations

import scipy.linalg
import torch
from typer.testing import CliRunner

from sncli.cli import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def svd_sigma(tensor: torch.Tensor) -> float:
    return float(scipy.linalg.svdvals(tensor.double().reshape(tensor.shape[0], -1).numpy())[0])
