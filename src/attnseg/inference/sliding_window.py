"""Whole-case inference on the preprocessed grid: slice-wise for 2D models, tiled for large inputs.

Tiling uses MONAI's ``sliding_window_inference`` with Gaussian weighting (sigma 1/8 of the window, 50 % overlap, as
nnU-Net). Flip test-time augmentation averages the probabilities of the in-plane flips.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["predict_probabilities", "logits_to_probabilities"]


def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes; a single-logit (sigmoid) model becomes two channels ``[1 - p, p]``."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def _flips(spatial_dims: int, tta: bool) -> list[tuple[int, ...]]:
    if not tta:
        return [()]
    a, b = spatial_dims, spatial_dims + 1  # the two in-plane axes of [B, C, *spatial]
    return [(), (a,), (b,), (a, b)]


@torch.no_grad()
def _run_2d(
    model: nn.Module,
    batch: torch.Tensor,
    input_size: Sequence[int],
    geometry: str,
    slab: int,
    channels: int,
    tta: bool,
    autocast: bool,
) -> torch.Tensor:
    """``batch``: ``[N, C*K, H, W]`` slices (slabs folded into channels) -> probabilities ``[N, classes, H, W]``."""
    from monai.inferers import sliding_window_inference

    size = tuple(input_size)
    h, w = batch.shape[-2:]

    def net(x: torch.Tensor) -> torch.Tensor:
        if slab > 1:
            x = x.reshape(x.shape[0], channels, slab, *x.shape[-2:])
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        return out.float()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if geometry == "resize":
            logits = net(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
            return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        if (h, w) == size:
            return net(x)
        return sliding_window_inference(
            x,
            size,
            sw_batch_size=max(1, x.shape[0]),
            predictor=net,
            overlap=0.5,
            mode="gaussian",
            padding_mode="constant",
            cval=float(x.min()),
        )

    total = None
    for dims in _flips(2, tta):
        x = torch.flip(batch, dims) if dims else batch
        p = logits_to_probabilities(forward(x))
        p = torch.flip(p, dims) if dims else p
        total = p if total is None else total + p
    return total / len(_flips(2, tta))


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image: np.ndarray,
    *,
    spatial_dims: int,
    input_size: Sequence[int],
    geometry: str = "spacing",
    slab: int = 1,
    batch_size: int = 8,
    tta: bool = False,
    device: torch.device | str = "cpu",
    autocast: bool = False,
) -> np.ndarray:
    """Class probabilities ``[classes, *spatial]`` for a preprocessed case ``image`` ``[C, *spatial]``.

    A 2D model on a volume ``[C, X, Y, Z]`` runs on the slices along the last axis, ``batch_size`` at a time (with
    ``slab`` adjacent slices each for slab models); a 2D image ``[C, H, W]`` is one slice; a 3D model tiles the
    volume with a Gaussian-weighted sliding window.
    """
    from monai.inferers import sliding_window_inference

    model.eval()
    device = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    channels = x.shape[0]
    if spatial_dims == 3:
        vol = x[None].to(device)

        def net(t: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=t.device.type, dtype=torch.bfloat16, enabled=autocast):
                return model(t).float()

        total = None
        flips = [(), (2,), (3,), (2, 3)] if tta else [()]
        for dims in flips:
            v = torch.flip(vol, dims) if dims else vol
            logits = sliding_window_inference(
                v, tuple(input_size), sw_batch_size=1, predictor=net, overlap=0.5, mode="gaussian", cval=float(v.min())
            )
            p = logits_to_probabilities(logits)
            p = torch.flip(p, dims) if dims else p
            total = p if total is None else total + p
        return (total / len(flips))[0].cpu().numpy()
    if x.ndim == 3:  # a 2D image
        x = x[..., None]
    depth = x.shape[-1]
    outputs = []
    for start in range(0, depth, batch_size):
        zs = list(range(start, min(start + batch_size, depth)))
        if slab > 1:
            half = slab // 2
            idx = torch.tensor([[min(max(z + o, 0), depth - 1) for o in range(-half, half + 1)] for z in zs])
            batch = x[..., idx]  # [C, X, Y, N, K]
            batch = batch.permute(3, 0, 4, 1, 2).reshape(len(zs), channels * slab, *x.shape[1:3])
        else:
            batch = x[..., zs].permute(3, 0, 1, 2)  # [N, C, X, Y]
        probs = _run_2d(model, batch.to(device), input_size, geometry, slab, channels, tta, autocast)
        outputs.append(probs.cpu())
    out = torch.cat(outputs, dim=0).permute(1, 2, 3, 0)  # [classes, X, Y, Z]
    out = out.numpy()
    return out[..., 0] if image.ndim == 3 else out
