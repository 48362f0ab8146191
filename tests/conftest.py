"""Shared fixtures: paths of the committed sample checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """Tiny problems: OpenMP threads only add spin-wait overhead (4× slower when the machine is
    shared), so such modules run single-threaded; the setting is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """sncli's records of its own journals (``sncli.journal.state_dir``) go to a temporary
    folder, not the developer's ~/.local/state; subprocesses inherit it."""
    import os

    folder = tmp_path_factory.mktemp("sncli-state")
    folder.chmod(0o700)
    saved = os.environ.get("SNCLI_STATE_DIR")
    os.environ["SNCLI_STATE_DIR"] = str(folder)
    yield
    if saved is None:
        os.environ.pop("SNCLI_STATE_DIR", None)
    else:
        os.environ["SNCLI_STATE_DIR"] = saved
