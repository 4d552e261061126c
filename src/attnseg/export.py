"""Export a trained network to ONNX, with a JSON sidecar describing the pre- and post-processing around it.

The graph is the bare network (logits out, dynamic batch; the spatial axes also dynamic when onnxruntime gives
PyTorch's logits at another size too). Everything outside the network stays outside the graph, as deployment users
ask for (nnU-Net #1730, #2407): the sidecar ``MODEL.onnx.json`` records the input layout, the network input size,
the geometry mode and target spacing, the normalisation (CT window and statistics), the labels and the slab size.
After export the ONNX model is run with onnxruntime and compared with PyTorch; the maximum difference is stored in
the sidecar.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnseg.errors import AttnsegError
from attnseg.inference.arrays import ARRAY_CONVENTIONS, accepted_forms
from attnseg.inference.predictor import Predictor
from attnseg.io import atomic_path, write_json
from attnseg.models.registry import check_input_size, model_info
from attnseg.runs import refuse_reserved

__all__ = ["export_onnx", "sidecar_path_for", "ExportError"]


class ExportError(AttnsegError, ValueError):
    """The requested export cannot be made (output name, model capability)."""


# the opsets the TorchScript exporter writes (torch.onnx's own bounds where this torch exposes them)
try:
    from torch.onnx._constants import ONNX_MAX_OPSET as MAX_OPSET
    from torch.onnx._constants import ONNX_MIN_OPSET as MIN_OPSET
except ImportError:  # pragma: no cover - a torch without the private constants
    MIN_OPSET, MAX_OPSET = 7, 20


def export_onnx(
    run_dir: str | Path,
    output: str | Path,
    *,
    checkpoint: str = "best",
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export ``run_dir``'s network to ``output`` (``NAME.onnx``) and write the sidecar ``NAME.onnx.json`` beside it.

    Either may go into the run directory, but never over one of its own files (:func:`attnseg.runs.refuse_reserved`).
    Returns the sidecar dict. Raises ``RuntimeError`` when onnxruntime disagrees with PyTorch by more than ``atol``
    times max(1, the largest |logit|) (nothing is left at ``output`` then). The spatial axes are dynamic when the
    graph also gives PyTorch's logits at twice the export size, else fixed (a model built for its size: MDSA-UNet's
    window counts, MSA2Net's MaxViT); the sidecar's ``input.dynamic_size`` says which.
    """
    output = Path(output)
    if output.suffix != ".onnx":
        raise ExportError(f"{output}: the output must be an .onnx file")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset}: the exporter writes opsets {MIN_OPSET} to {MAX_OPSET} (default 17)")
    sidecar_path = sidecar_path_for(output)
    refuse_reserved(output, "--output")
    refuse_reserved(sidecar_path, "--output")
    for path in (output, sidecar_path):
        if path.is_dir():
            raise ExportError(f"{path}: is a folder; the export writes {output.name} and {sidecar_path.name}")
    predictor = Predictor.from_run(run_dir, checkpoint=checkpoint, device="cpu")
    model, plan = predictor.model.eval(), predictor.plan
    name = model.attnseg_build["name"]
    if not model_info(name).onnx_export:
        raise ExportError(f"{run_dir}: model {name!r} does not support ONNX export (see `attnseg models`)")
    channels = 3 if "rgb" in plan.channel_kinds else len(plan.channel_kinds)
    slab = (predictor.slab,) if predictor.slab > 1 else ()
    example = torch.randn(1, channels, *slab, *plan.input_size, generator=torch.Generator().manual_seed(0))
    spatial_axes = {2 + len(slab) + i: f"dim{i}" for i in range(len(plan.input_size))}
    with atomic_path(output) as tmp:

        def export(axes: dict[int, str]) -> None:
            with warnings.catch_warnings():
                # the tracer's notes on Python-side shape checks (constant for the traced graph; the dynamic axes
                # are checked against onnxruntime below) and on eval-mode InstanceNorm are not the user's concern
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message=r".*ONNX export mode is set to TrainingMode.EVAL")
                try:
                    torch.onnx.export(
                        model,
                        (example,),
                        str(tmp),
                        dynamo=False,
                        opset_version=opset,
                        input_names=["image"],
                        output_names=["logits"],
                        dynamic_axes={"image": {0: "batch", **axes}, "logits": {0: "batch", **axes}},
                    )
                except torch.onnx.errors.UnsupportedOperatorError as exc:  # an operator newer than the opset asked
                    first = str(exc).splitlines()[0]
                    raise ExportError(
                        f"opset {opset}: {name!r} needs a newer opset ({first}); the default 17 works"
                    ) from None

        export(spatial_axes)
        if check and not _other_size_agrees(str(tmp), model, example, len(slab), atol):
            spatial_axes = {}  # a model built for its size (window counts, positional tables) traced constants
            export(spatial_axes)
        checked = _check_onnxruntime(str(tmp), model, example) if check else None
        max_diff = None if checked is None else checked[0]
        if checked is not None and max_diff > atol * checked[1]:
            raise RuntimeError(
                f"{output}: onnxruntime differs from PyTorch by {max_diff:.2e} (> {atol:g} x {checked[1]:.3g})"
            )
    sidecar = {
        "model": getattr(model, "attnseg_build", {}),
        "input": {
            "name": "image",
            "layout": "[B, C, K, H, W]"
            if slab
            else ("[B, C, H, W]" if len(plan.input_size) == 2 else "[B, C, D, H, W]"),
            "channels": channels,
            "slab_size": predictor.slab,
            "size": list(plan.input_size),
            "dynamic_size": bool(spatial_axes),  # other sizes checked against PyTorch at export; else this size only
        },
        "output": {"name": "logits", "activation": "sigmoid" if plan.num_classes == 1 else "softmax"},
        "preprocessing": asdict(plan),
        # the source arrays the preprocessing starts from, as Predictor.predict takes them (README "Python API")
        "array_conventions": {**ARRAY_CONVENTIONS, "accepted": accepted_forms(plan)},
        "opset": opset,
        "onnxruntime_max_abs_diff": max_diff,
        "checkpoint": checkpoint,
    }
    try:
        write_json(sidecar_path, sidecar)
    except BaseException:
        output.unlink(missing_ok=True)  # the network without its sidecar is half an export
        raise
    return sidecar


def sidecar_path_for(output: str | Path) -> Path:
    """``NAME.onnx`` -> ``NAME.onnx.json`` (never ``NAME.json``, which could be a run's ``model.json``)."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def _other_size_agrees(path: str, model: torch.nn.Module, example: torch.Tensor, slab: int, atol: float) -> bool:
    """Whether the graph exported with dynamic spatial axes gives PyTorch's logits at twice the export size (True
    without onnxruntime: unchecked, as the size check)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return True
    size = [2 * s for s in example.shape[2 + slab :]]
    try:
        check_input_size(model, size)
    except ValueError:
        return False
    other = torch.randn(1, *example.shape[1 : 2 + slab], *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        try:
            expected = model(other).numpy()
        except (ValueError, RuntimeError):  # a model built for one size refusing another
            return False
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    try:
        got = session.run(None, {"image": other.numpy()})[0]
    except Exception:  # noqa: BLE001 - onnxruntime's shape errors have no common type
        return False
    scale = max(1.0, float(np.abs(expected).max()))
    return got.shape == expected.shape and float(np.abs(got - expected).max()) <= 10 * atol * scale


def _check_onnxruntime(path: str, model: torch.nn.Module, example: torch.Tensor) -> tuple[float, float] | None:
    """``(max |onnxruntime - PyTorch|, the tolerance's scale: max(1, max |logit|))`` on a batch of 2, or None
    without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    batch = torch.cat([example, torch.flip(example, dims=[-1])])  # batch 2: the batch axis is dynamic
    with torch.no_grad():
        expected = model(batch).numpy()
    got = session.run(None, {"image": batch.numpy()})[0]
    return float(np.abs(got - expected).max()), max(1.0, float(np.abs(expected).max()))
