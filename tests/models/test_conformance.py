"""Conformance: every registered model honours the contract of ``attnseg.models.contract``.

One class parametrised over ``list_models()``: a model registered later is covered without editing this file. Each
model is built in the small configuration its registration declares (``test_kwargs`` / ``test_input_size``), so
the same code paths as the default run at CPU size. The capability flags (``onnx_export``, ``torch_compile``) are
checked in both directions: a True flag must work, a False flag must really fail (or disagree).

``torch.compile`` runs a training step (forward and backward) with the ``aot_eager`` backend by default: TorchDynamo's
graph capture and AOTAutograd (where model code breaks compilation: graph breaks on unsupported Python,
data-dependent shapes, in-place ops on views) at a few seconds per model. Inductor's C++ code generation takes
1-16 minutes per model on a cold cache on a 2-core CPU (benchmarks/results/compile_speedup.md), so it runs when asked:
``ATTNSEG_COMPILE_BACKEND=inductor pytest -m slow tests/models/test_conformance.py``. The ``torch_compile`` flags
were determined with inductor.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnseg.bench.compile_check import (
    GRAD_RTOL,
    disable_dropout,
    gradient_difference,
    gradients_agree,
    perturbation_floor,
)
from attnseg.models import create_model, list_models, model_info
from attnseg.models.registry import (
    DeclaresUnusedParameters,
    FeatureInterfaceModel,
    SegmentationModel,
    UnknownModelOptionError,
    ddp_safe,
    has_feature_interface,
    model_options,
    unused_parameters,
)

NAMES = list_models()
IN_CHANNELS = 1  # gray: also runs the gray -> RGB repeat of the models that have one
NUM_CLASSES = 2  # differs from the slab depth (3), so a slice axis mistaken for classes shows
COMPILE_BACKEND = os.environ.get("ATTNSEG_COMPILE_BACKEND", "aot_eager")  # see the module docstring


def _build(name: str, seed: int = 0) -> torch.nn.Module:
    info = model_info(name)
    torch.manual_seed(seed)
    return create_model(name, IN_CHANNELS, NUM_CLASSES, **info.test_kwargs)


def _size(name: str) -> tuple[int, ...]:
    return tuple(model_info(name).test_input_size)


def _input(model: torch.nn.Module, size: tuple[int, ...], batch: int, seed: int = 0) -> torch.Tensor:
    """A random batch; slab models (``slab_size``) take ``[B, C, K, *spatial]``."""
    slab = getattr(model, "slab_size", None)
    shape = (batch, IN_CHANNELS, *((int(slab),) if slab else ()), *size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _tolerance(reference: torch.Tensor, rel: float) -> float:
    """``rel`` in units of the output scale: untrained MDSA-UNet logits reach 3e3, where float32 steps are 2.4e-4."""
    return rel * max(1.0, reference.abs().max().item())


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _names_a_valid_size(message: str, validate: Callable[[tuple[int, ...]], None], ndim: int) -> bool:
    """True when ``message`` contains ``ndim`` numbers in a row (``64x64``, ``(48, 48)``, ``224, 336``) forming a
    size ``validate`` accepts."""
    for run in re.findall(r"\d+(?:(?:x|, ?)\d+)+", message):
        numbers = [int(n) for n in re.split(r"x|, ?", run)]
        for i in range(len(numbers) - ndim + 1):
            try:
                validate(tuple(numbers[i : i + ndim]))
            except ValueError:
                continue
            return True
    return False


def _onnx_and_eager(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Export as ``attnseg export`` does (batch-1 trace, dynamic batch and sides); onnxruntime's and eager outputs
    on the batch ``x``."""
    import onnxruntime as ort

    ndim = len(x.shape) - 2 - (1 if getattr(model, "slab_size", None) else 0)
    spatial = {len(x.shape) - ndim + i: f"dim{i}" for i in range(ndim)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks, expected for every model
        torch.onnx.export(
            model,
            (x[:1],),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch", **spatial}, "logits": {0: "batch"}},
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x)
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), expected


@pytest.mark.parametrize("name", NAMES)
class TestConformance:
    """The model contract, one check per method, for every registered name."""

    def test_metadata_and_protocol(self, name: str) -> None:
        info = model_info(name)
        model = _build(name)
        assert info.paper.strip(), f"{name}: register_model(paper=...) is empty"
        assert "Args:" in (type(model).__doc__ or ""), f"{type(model).__name__} docstring has no Args: section"
        assert isinstance(model, SegmentationModel)
        assert len(info.test_input_size) == len(info.default_input_size) == info.spatial_dims
        assert isinstance(info.onnx_export, bool) and isinstance(info.torch_compile, bool)
        assert has_feature_interface(model) == isinstance(model, FeatureInterfaceModel)
        declared = unused_parameters(model)
        assert ddp_safe(model) == (not declared)
        if declared:
            assert isinstance(model, DeclaresUnusedParameters)
            names = [n for n, _ in model.named_parameters()]
            for prefix, reason in declared.items():
                assert isinstance(reason, str) and reason.strip(), f"{name}: no reason given for {prefix!r}"
                assert any(_under(n, [prefix]) for n in names), f"{name}: {prefix!r} matches no parameter"

    def test_options_are_listed_and_checked(self, name: str) -> None:
        """Every option is known (``options_from`` for ``**kwargs`` factories), so a typo is refused by name."""
        info = model_info(name)
        options = model_options(name)
        assert options is not None, f"{name}: a **kwargs factory must declare register_model(options_from=...)"
        assert set(info.test_kwargs) <= set(options), f"{name}: test_kwargs outside {sorted(options)}"
        if info.size_kwargs is not None:
            assert set(info.size_kwargs(tuple(info.default_input_size))) <= set(options)
        with pytest.raises(UnknownModelOptionError, match=r"has no option 'no_such_option'.*its options: "):
            create_model(name, IN_CHANNELS, NUM_CLASSES, no_such_option=1, **info.test_kwargs)

    def test_logits_shape_finite_and_input_dependent(self, name: str) -> None:
        model = _build(name).eval()
        size = _size(name)
        x = _input(model, size, 2)
        with torch.no_grad():
            out = model(x)
            other = model(_input(model, size, 2, seed=1))
        assert out.shape == (2, NUM_CLASSES, *size)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert not torch.allclose(out, other), "different inputs give the same output"
        assert not torch.allclose(out[0], out[1]), "the two samples of a batch give the same output"

    def test_every_used_parameter_gets_a_finite_gradient(self, name: str) -> None:
        model = _build(name).train()
        declared = unused_parameters(model)
        out = model(_input(model, _size(name), 2))
        assert torch.isfinite(out).all()
        out.float().sum().backward()
        missing, bad, lying = [], [], []
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if _under(n, declared):
                if p.grad is not None:
                    lying.append(n)  # declared unused but the forward reached it
            elif p.grad is None:
                missing.append(n)
            elif not torch.isfinite(p.grad).all():
                bad.append(n)
        assert not missing, f"{name}: no gradient for {missing[:5]} (declare them in unused_parameters() if dead)"
        assert not bad, f"{name}: non-finite gradient for {bad[:5]}"
        assert not lying, f"{name}: declared unused but got a gradient: {lying[:5]}"

    def test_feature_interface_matches_forward(self, name: str) -> None:
        model = _build(name).eval()
        if not has_feature_interface(model):
            pytest.skip(f"{name} has no feature interface (optional)")
        size = _size(name)
        x = _input(model, size, 2)
        with torch.no_grad():
            out = model(x)
            features = model.forward_features(x)
            via_head = model.forward_head(features)
        assert features.shape == (2, model.feature_channels, *size)
        torch.testing.assert_close(via_head, out, rtol=1e-5, atol=_tolerance(out, 1e-5))

    def test_batch_independence_in_eval(self, name: str) -> None:
        model = _build(name).eval()
        x = _input(model, _size(name), 3)
        with torch.no_grad():
            batched = model(x)
            for i in range(3):
                single = model(x[i : i + 1])
                torch.testing.assert_close(
                    batched[i : i + 1],
                    single,
                    rtol=1e-5,
                    atol=_tolerance(batched, 1e-5),
                    msg=lambda m, i=i: f"{name}, sample {i} alone vs in a batch of 3: {m}",
                )

    def test_eval_determinism_and_seeded_init(self, name: str) -> None:
        model = _build(name).eval()
        x = _input(model, _size(name), 2)
        with torch.no_grad():
            assert torch.equal(model(x), model(x)), "two eval passes differ"
        same = _build(name).state_dict()
        ours = model.state_dict()
        assert list(same) == list(ours)
        differing = [k for k in ours if not torch.equal(ours[k], same[k])]
        assert not differing, f"{name}: same seed, different init for {differing[:5]}"
        other = _build(name, seed=1).state_dict()
        assert any(not torch.equal(ours[k], other[k]) for k in ours), "the init does not depend on the seed"

    def test_wrong_input_size_raises_naming_a_valid_size(self, name: str) -> None:
        info = model_info(name)
        model = _build(name).eval()
        size = _size(name)
        if info.input_divisor == 1:
            # takes any size: an odd one returns logits at that size
            odd = tuple(s | 1 for s in size)
            model.validate_input_size(odd)
            with torch.no_grad():
                out = model(_input(model, odd, 1))
            assert out.shape == (1, NUM_CLASSES, *odd)
            return
        bad = tuple(s + 1 for s in size)
        with pytest.raises(ValueError) as from_validate:
            model.validate_input_size(bad)
        message = str(from_validate.value)
        assert _names_a_valid_size(message, model.validate_input_size, len(size)), (
            f"{name}: the message names no valid size: {message}"
        )
        with pytest.raises(ValueError) as from_forward, torch.no_grad():
            model(_input(model, bad, 1))
        assert str(from_forward.value) == message, "forward must raise the model's own validate_input_size error"

    def test_safetensors_round_trip(self, name: str, tmp_path: Path) -> None:
        model = _build(name).eval()
        path = tmp_path / "weights.safetensors"
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
        build = model.attnseg_build
        assert build["name"] == name and build["kwargs"] == model_info(name).test_kwargs
        torch.manual_seed(1234)  # a different init, so that only the loaded weights can make the outputs agree
        rebuilt = create_model(build["name"], build["in_channels"], build["num_classes"], **build["kwargs"]).eval()
        rebuilt.load_state_dict(load_file(str(path)), strict=True)
        x = _input(model, _size(name), 2)
        with torch.no_grad():
            assert torch.equal(model(x), rebuilt(x))

    def test_onnx_export_flag(self, name: str) -> None:
        model = _build(name).eval()
        x = _input(model, _size(name), 2)
        if model_info(name).onnx_export:
            got, expected = _onnx_and_eager(model, x)
            torch.testing.assert_close(got, expected, rtol=0, atol=_tolerance(expected, 1e-4))
            return
        try:
            got, expected = _onnx_and_eager(model, x)
        except Exception:  # noqa: BLE001 - any export or runtime failure confirms the flag
            return
        assert not torch.allclose(got, expected, rtol=0, atol=_tolerance(expected, 1e-4)), (
            f"{name}: ONNX export works and onnxruntime agrees; register it with onnx_export=True"
        )

    @pytest.mark.slow
    def test_torch_compile_flag(self, name: str) -> None:
        """A compiled training step (train mode, dropout off: inductor draws its own random numbers) gives eager's
        logits, and gradients that agree by ``attnseg.bench.compile_check``'s rule (within 1e-3 of the largest
        gradient, or within 2x what a 1e-6 relative input perturbation does to eager's gradients: ReLU kinks and BN
        over a few values make some test configurations ill-conditioned); benchmarks/compile_speedup.py applies the
        same rule at larger sizes."""
        import copy

        import torch._dynamo
        import torch.nn.functional as F

        model = _build(name).train()
        disable_dropout(model)
        twin = copy.deepcopy(model)
        x = _input(model, _size(name), 2)
        target = torch.randint(0, NUM_CLASSES, (2, *_size(name)), generator=torch.Generator().manual_seed(1))

        def step(module: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor) -> tuple:
            module.zero_grad(set_to_none=True)
            logits = fn(inp)
            F.cross_entropy(logits, target).backward()
            return logits.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

        expected, eager = step(model, model, x)
        torch._dynamo.reset()
        compiled = torch.compile(twin, backend=COMPILE_BACKEND)
        if not model_info(name).torch_compile:
            try:
                got, _ = step(twin, compiled, x)
            except Exception:  # noqa: BLE001 - any compile failure confirms the flag
                return
            assert not torch.allclose(got, expected, rtol=0, atol=_tolerance(expected, 1e-4)), (
                f"{name}: torch.compile ({COMPILE_BACKEND}) works and agrees; register it with torch_compile=True"
            )
            return
        got, grads = step(twin, compiled, x)
        torch.testing.assert_close(got, expected, rtol=0, atol=_tolerance(expected, 1e-4))
        assert grads.keys() == eager.keys(), f"{name}: compiled and eager train different parameters"
        diff, where = gradient_difference(grads, eager)
        # the floor costs three eager steps: measured only when the plain bound fails
        floor = 0.0 if diff <= GRAD_RTOL else perturbation_floor(lambda inp: step(model, model, inp)[1], x, eager)
        assert gradients_agree(diff, floor), (
            f"{name}: compiled ({COMPILE_BACKEND}) gradient of {where} differs from eager's by {diff:.1e} of the "
            f"largest gradient (conditioning floor {floor:.1e})"
        )

    def test_bf16_autocast_training_step_is_close_to_fp32(self, name: str) -> None:
        """``--amp bf16`` on CPU: a training step under bf16 autocast gives a finite loss within 2 % of fp32 and
        finite gradients pointing the same way (cosine >= 0.5; measured per model in docs/mixed_precision.md)."""
        import torch.nn.functional as F

        from attnseg.training.precision import bf16_conv3d_backward_is_reliable

        if len(_size(name)) == 3 and not bf16_conv3d_backward_is_reliable("cpu"):
            pytest.skip("this CPU's oneDNN bf16 Conv3d weight gradients are wrong; attnseg train refuses bf16 here")
        model = _build(name).train()
        x = _input(model, _size(name), 2)
        plane = x if x.dim() == 2 + len(_size(name)) else x[:, :, x.shape[2] // 2]  # a slab's centre slice
        target = (plane[:, 0] > 0.5).long()  # a learnable target: random labels give cancelling gradients
        initial = {k: v.clone() for k, v in model.state_dict().items()}

        def step(bf16: bool) -> tuple[float, torch.Tensor]:
            model.load_state_dict(initial)
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), target)
            loss.backward()
            grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
            return loss.item(), torch.cat(grads)

        loss32, grad32 = step(False)
        loss16, grad16 = step(True)
        assert torch.isfinite(grad16).all()
        assert abs(loss16 - loss32) <= 2e-2 * abs(loss32), f"{name}: bf16 loss {loss16} vs fp32 {loss32}"
        cosine = F.cosine_similarity(grad32, grad16, dim=0).item()
        assert cosine >= 0.5, f"{name}: bf16 gradient cosine {cosine:.3f} to fp32"

    def test_channels_last_gives_the_same_logits(self, name: str) -> None:
        """``--channels-last``: the model in NHWC / NDHWC memory format computes the same function."""
        model = _build(name).eval()
        x = _input(model, _size(name), 2)
        with torch.no_grad():
            expected = model(x)
            fmt = torch.channels_last if len(_size(name)) == 2 else torch.channels_last_3d
            model.to(memory_format=fmt)
            got = model(x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=_tolerance(expected, 1e-4))
