"""Reading the official-equivalence fixtures copied into ``tests/fixtures/official/<model>/<case>/``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

OFFICIAL = Path(__file__).parent / "fixtures" / "official"


def load_case(model: str, case: str) -> tuple[dict, dict[str, torch.Tensor], list[torch.Tensor], np.ndarray]:
    """``(meta, official state dict, inputs in forward order, official output)`` of one fixture case."""
    folder = OFFICIAL / model / case
    meta = json.loads((folder / "meta.json").read_text())
    inputs = [torch.from_numpy(np.load(folder / spec["file"])) for spec in meta["inputs"]]
    return meta, load_file(str(folder / "weights.safetensors")), inputs, np.load(folder / meta["output"]["file"])
