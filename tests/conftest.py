"""Shared fixtures: paths of the committed sample checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def mlp_path() -> Path:
    return SAMPLES / "mlp.safetensors"


@pytest.fixture(scope="session")
def disc_parametrized_path() -> Path:
    return SAMPLES / "sngan_disc_parametrized.pt"


@pytest.fixture(scope="session")
def disc_legacy_path() -> Path:
    return SAMPLES / "sngan_disc_legacy.pt"


@pytest.fixture(scope="session")
def lightning_path() -> Path:
    return SAMPLES / "lightning_cnn.ckpt"


@pytest.fixture(scope="session")
def transformer_index_path() -> Path:
    return SAMPLES / "tiny_transformer" / "model.safetensors.index.json"
