"""Shared test set-up: one intra-op thread per test process (pytest-xdist runs two), synthetic datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # two xdist workers on two cores: more threads only oversubscribe
sys.path.insert(0, str(Path(__file__).parent))  # `import synthetic`

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def _attnseg_cache(tmp_path_factory):
    """attnseg's caches (the check-data summaries) go to a temporary folder, never to the user's ~/.cache."""
    os.environ["ATTNSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("attnseg_cache"))


@pytest.fixture(scope="session")
def ct_dataset(tmp_path_factory) -> Path:
    from synthetic import make_ct_dataset

    return make_ct_dataset(tmp_path_factory.mktemp("ct") / "Dataset900_Synthetic")


@pytest.fixture(scope="session")
def rgb_dataset(tmp_path_factory) -> Path:
    from synthetic import make_rgb_dataset

    return make_rgb_dataset(tmp_path_factory.mktemp("rgb") / "Dataset901_Lesions")


@pytest.fixture(scope="session")
def demo_dataset() -> Path:
    from attnseg.demo import demo_dataset_path

    return demo_dataset_path()
