"""Model complexity: parameters, MACs (fvcore), true FLOPs (FlopCounterMode) and a thop-compatible MACs column.

Why three counters (the MACs vs FLOPs confusion of paper tables; README.md, Model zoo, lists all three):

- ``thop.profile`` returns **MACs** and sees only ``nn.Module`` forward hooks, so functional ``torch.matmul``, ``@``,
  ``einsum`` and ``scaled_dot_product_attention`` inside custom attention count as zero. Papers print its number as
  "FLOPs"; we keep it only as a column to compare against paper tables.
- fvcore's ``FlopCountAnalysis`` traces the graph and counts matmul/einsum, but one fvcore "flop" is one **MAC**, and
  operators without a handle (e.g. ``aten::scaled_dot_product_attention``) are skipped: we record which ones.
- ``torch.utils.flop_counter.FlopCounterMode`` counts at the dispatcher, ``2*M*N*K`` per matmul (true FLOPs),
  including functional attention. In torch 2.14 it has no formula for the CPU flash-attention kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``, counted as 0), so we supply one (the same two-matmul formula
  torch uses for its CUDA SDPA kernels); ``tests/bench`` checks it against a hand-computed case.

Neither fvcore nor FlopCounterMode counts element-wise work (activations, softmax, normalisation in FlopCounterMode;
fvcore counts batch-norm), so ``flops / 2`` and fvcore MACs agree exactly only for conv/linear/matmul networks.
All counts are for one forward pass in eval mode at the given input shape.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "MAC_BEARING_HINTS",
    "ParameterCount",
    "ComplexityResult",
    "count_parameters",
    "mac_bearing",
    "count_flops",
    "fvcore_macs",
    "thop_macs",
    "thop_profile",
    "measure_complexity",
    "output_loss",
]


# Substrings of operator names that do multiply-accumulates; a skipped op matching one makes fvcore's MACs too low.
MAC_BEARING_HINTS = ("attention", "mm", "matmul", "einsum", "conv", "linear", "bilinear")


def mac_bearing(ops: dict[str, int] | Sequence[str]) -> list[str]:
    """The operator names in ``ops`` that carry multiply-accumulates (see ``MAC_BEARING_HINTS``)."""
    return [op for op in ops if any(h in op.lower() for h in MAC_BEARING_HINTS)]


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts (shared parameters counted once)."""

    total: int
    trainable: int


@dataclass
class ComplexityResult:
    """Every complexity figure for one input shape; ``None`` where a counter could not run (see the ``*_error``)."""

    input_shape: tuple[int, ...]
    params: ParameterCount
    flops: int | None  # true FLOPs (FlopCounterMode), 2 per multiply-accumulate
    flops_by_operator: dict[str, int] = field(default_factory=dict)
    flops_error: str | None = None
    macs_fvcore: int | None = None  # fvcore "flops" (= MACs)
    fvcore_unsupported_ops: dict[str, int] = field(default_factory=dict)  # op -> times skipped
    fvcore_error: str | None = None
    macs_thop: int | None = None  # thop.profile MACs (module hooks only), None when thop is missing or failed
    params_thop: int | None = None  # thop.profile's parameter count (modules with a thop rule only)
    thop_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


def count_parameters(model: nn.Module) -> ParameterCount:
    """Total and trainable (``requires_grad``) parameter counts of ``model``."""
    params = list(model.parameters())  # ``parameters()`` already yields a shared tensor once
    return ParameterCount(
        total=sum(p.numel() for p in params), trainable=sum(p.numel() for p in params if p.requires_grad)
    )


def _sdpa_cpu_forward_flops(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any
) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _missing_flop_formulas() -> dict[Any, Any]:
    """Formulas for kernels ``FlopCounterMode`` does not know (only those it lacks, so newer torch takes precedence)."""
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    extra: dict[Any, Any] = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_forward_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward_flops),
    ):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry:
            extra[op] = formula
    return extra


def _op_name(op: Any) -> str:
    return str(getattr(op, "_qualified_op_name", None) or op).replace("::", ".")


def count_flops(model: nn.Module, inputs: Sequence[torch.Tensor], backward: bool = False) -> tuple[int, dict[str, int]]:
    """True FLOPs of ``model(*inputs)`` measured by ``FlopCounterMode`` (2 per multiply-accumulate).

    Args:
        model: the network; run as it is (call ``eval()`` first for inference figures).
        inputs: positional inputs.
        backward: also count the backward pass of ``sum`` over the (tensor) outputs.

    Returns:
        ``(total, by_operator)`` where ``by_operator`` maps an aten operator name to its FLOPs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_missing_flop_formulas())
    with counter:
        if backward:
            output_loss(model(*inputs)).backward()
        else:
            with torch.no_grad():
                model(*inputs)
    by_op = {_op_name(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def _tensors_in(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors_in(o)]
    return []


def output_loss(out: Any) -> torch.Tensor:
    """Scalar sum over every tensor in a (possibly nested, e.g. deep-supervision) model output, to back-propagate."""
    tensors = _tensors_in(out)
    if not tensors:
        raise TypeError(f"model output of type {type(out).__name__} holds no tensor to back-propagate")
    return torch.stack([t.float().sum() for t in tensors]).sum()


def fvcore_macs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[int, dict[str, int]]:
    """MACs counted by fvcore's ``FlopCountAnalysis`` (one fvcore "flop" is one MAC).

    Returns:
        ``(total_macs, unsupported_ops)``: operators fvcore has no handle for were skipped (counted as 0); the dict
        maps each to the number of times it occurred.

    Raises:
        ImportError: fvcore is not installed.
        Exception: whatever ``torch.jit.trace`` raises for models it cannot trace.
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # jit deprecation and tracer warnings are noise here
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, tuple(inputs))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = int(analysis.total())
        unsupported = {str(k): int(v) for k, v in sorted(analysis.unsupported_ops().items())}
    return total, unsupported


def thop_profile(model: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[int, int] | None:
    """``(MACs, params)`` as ``thop.profile`` reports them (module hooks only), or ``None`` without thop.

    thop's parameter count skips modules it has no rule for (e.g. GroupNorm), which is what paper tables quote.
    thop adds ``total_ops``/``total_params`` buffers to every module it profiles, so it runs on a deep copy.
    """
    try:
        import thop
    except ImportError:
        return None
    clone = copy.deepcopy(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        macs, params = thop.profile(clone, inputs=tuple(inputs), verbose=False)
    return int(macs), int(params)


def thop_macs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int | None:
    """MACs as ``thop.profile`` reports them, or ``None`` when thop is not installed."""
    profile = thop_profile(model, inputs)
    return None if profile is None else profile[0]


def _error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]


def measure_complexity(
    model: nn.Module,
    input_shape: Sequence[int],
    device: str | torch.device = "cpu",
    use_fvcore: bool = True,
    use_thop: bool = True,
) -> ComplexityResult:
    """Parameters, fvcore MACs, true FLOPs and thop MACs of one forward pass in eval mode.

    A counter that fails (e.g. a model ``torch.jit.trace`` cannot trace) leaves its figure ``None`` and records the
    error; the other figures are still measured. The model's train/eval mode is restored afterwards.

    Args:
        model: the network.
        input_shape: full input shape ``[B, C, *spatial]`` (the field reports complexity at batch 1).
        device: where to run the counters.
        use_fvcore: run fvcore (slow on large models: it traces the graph).
        use_thop: run thop (when installed).

    Returns:
        A :class:`ComplexityResult`.
    """
    shape = tuple(int(s) for s in input_shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    result = ComplexityResult(input_shape=shape, params=count_parameters(model), flops=None)
    try:
        try:
            result.flops, result.flops_by_operator = count_flops(model, (x,))
        except Exception as exc:  # noqa: BLE001 - a counter failing must not hide the other figures
            result.flops_error = _error_text(exc)
        if use_fvcore:
            try:
                result.macs_fvcore, result.fvcore_unsupported_ops = fvcore_macs(model, (x,))
            except Exception as exc:  # noqa: BLE001
                result.fvcore_error = _error_text(exc)
        else:
            result.fvcore_error = "skipped"
        shared = len(list(model.named_modules(remove_duplicate=False))) - len(list(model.named_modules()))
        if use_thop and shared:  # thop sums a module once per path to it: its counts would be inflated
            result.thop_error = f"not reported: thop counts the {shared} module(s) reachable by two paths twice"
        elif use_thop:
            try:
                profile = thop_profile(model, (x,))
                if profile is None:
                    result.thop_error = "thop is not installed"
                else:
                    result.macs_thop, result.params_thop = profile
            except Exception as exc:  # noqa: BLE001
                result.thop_error = _error_text(exc)
        else:
            result.thop_error = "skipped"
    finally:
        model.train(was_training)
    return result
