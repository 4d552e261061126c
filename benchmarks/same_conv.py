"""``attnseg.layers.same_conv2d`` against PyTorch's own conv backward, per conv shape of the seed models.

For a stride-1 "same"-padded conv, ``same_conv2d`` keeps the forward (``F.conv2d``) and replaces the backward by
forward convolutions (docs/models/malunet.md §7): the input gradient as the conv of the output gradient with the
flipped kernel; the depthwise weight gradient, for kernels >= 5 or a dilation, as one grouped conv of the padded
input with the output gradient as the kernel (one group per sample and channel), summed over the batch. This script
measures, side by side in one run, for the depthwise convs of MDSA-UNet (LCE 5x5, aggregator 5x5 / 7x7; Li et al.,
JBHI 2025), MALUNet (DGA dilated 3x3, gated attention 5x5; Ruan et al., BIBM 2022) and MSA2Net (LKA 5x5 and dilated
7x7) at the sizes they run at:

- ``weight-grad``: the weight gradient alone, oneDNN's weight-only ``convolution_backward`` against the grouped conv
  (conversion of channels-last tensors to NCHW included);
- ``fwd+bwd``: the module call plus ``backward`` against ``same_conv2d``'s custom function, input and weight
  gradients.

Method: one intra-op thread (``--threads``), ``--rounds`` rounds in which the two variants alternate call by call
(``attnseg.bench.speed.time_interleaved``, ``--runs`` timed calls each after one warm-up), per-round ratio of the
median CPU times (``time.process_time``: the steadier clock on a shared machine), reported as the median ratio and
its spread. Before timing, the two weight gradients are compared in float64. Writes
``benchmarks/results/same_conv.{json,md}``.

Usage: ``python benchmarks/same_conv.py [--threads 1] [--rounds 5] [--runs 5]``
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from attnseg.bench.report import environment_info, save_results
from attnseg.bench.speed import time_interleaved
from attnseg.layers.same_conv import _SameConv2d, depthwise_weight_grad

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# (model, conv, batch, channels, side, kernel, dilation, channels-last)
CASES = (
    ("mdsa_unet", "LCE 5x5", 2, 128, 56, 5, 1, True),
    ("mdsa_unet", "LCE 5x5", 2, 320, 28, 5, 1, True),
    ("mdsa_unet", "aggregator 7x7", 2, 32, 56, 7, 1, True),
    ("mdsa_unet", "LCE 5x5", 8, 128, 56, 5, 1, True),
    ("malunet", "gated attention 5x5", 8, 24, 32, 5, 1, False),
    ("malunet", "DGA dilated 3x3 (d=7)", 8, 24, 32, 3, 7, False),
    ("malunet", "DGA dilated 3x3 (d=2)", 8, 8, 16, 3, 2, False),
    ("msa2net", "LKA 5x5", 2, 192, 28, 5, 1, False),
    ("msa2net", "LKA dilated 7x7 (d=3)", 2, 96, 56, 7, 3, False),
)


def _inputs(batch: int, channels: int, side: int, channels_last: bool, dtype: torch.dtype) -> tuple[Any, Any]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, side, side, generator=gen, dtype=dtype)
    g = torch.randn(batch, channels, side, side, generator=gen, dtype=dtype)
    if channels_last:
        x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    return x, g


def _onednn_weight_grad(g: Any, x: Any, weight: Any, pad: int, dilation: int) -> Any:
    groups = weight.shape[0]
    args = (None, [1, 1], [pad, pad], [dilation, dilation], False, [0, 0], groups, [False, True, False])
    return torch.ops.aten.convolution_backward(g, x, weight, *args)[1]


def _ratio(steps: dict[str, Any], rounds: int, runs: int) -> dict[str, Any]:
    per_round = []
    for r in range(rounds):
        res = time_interleaved(steps, runs=runs, warmup=1 if r == 0 else 0, digits=3)
        per_round.append({n: res[n]["process_cpu"]["median_ms"] for n in steps})
    names = list(steps)
    ratios = [p[names[0]] / p[names[1]] for p in per_round]
    return {
        **{f"{n}_ms": round(statistics.median(p[n] for p in per_round), 3) for n in names},
        "ratio": round(statistics.median(ratios), 2),
        "spread": [round(min(ratios), 2), round(max(ratios), 2)],
    }


def run_case(case: tuple, rounds: int, runs: int) -> dict[str, Any]:
    model, name, batch, channels, side, k, d, channels_last = case
    pad = d * (k - 1) // 2
    conv = torch.nn.Conv2d(channels, channels, k, padding=pad, dilation=d, groups=channels)
    x64, g64 = _inputs(batch, channels, side, channels_last, torch.float64)
    w64 = conv.weight.detach().double()
    ref = _onednn_weight_grad(g64, x64, w64, pad, d)
    err = float((depthwise_weight_grad(g64, x64, k, pad, d) - ref).abs().max() / ref.abs().max())
    x, g = _inputs(batch, channels, side, channels_last, torch.float32)
    w = conv.weight.detach()
    weight_grad = _ratio(
        {
            "onednn": lambda: _onednn_weight_grad(g, x, w, pad, d),
            "grouped": lambda: depthwise_weight_grad(g, x, k, pad, d),
        },
        rounds,
        runs,
    )
    xg = x.clone(memory_format=torch.preserve_format).requires_grad_(True)

    def module_step() -> None:
        conv(xg).backward(g)
        conv.zero_grad(set_to_none=True)
        xg.grad = None

    def same_step() -> None:
        _SameConv2d.apply(xg, conv.weight, conv.bias, pad, d, channels).backward(g)
        conv.zero_grad(set_to_none=True)
        xg.grad = None

    step = _ratio({"module": module_step, "same_conv2d": same_step}, rounds, runs)
    shape = f"{batch}x{channels}x{side}x{side}{' CL' if channels_last else ''}"
    return {
        "model": model,
        "conv": name,
        "input": shape,
        "float64_max_rel_diff": err,
        "weight_grad": weight_grad,
        "fwd_bwd": step,
    }


def _markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# same_conv2d: depthwise conv backward as forward convolutions, against PyTorch's (oneDNN) backward",
        "",
        f"Generated {doc['created']} by `python benchmarks/same_conv.py`; {doc['environment']['host']['cpu']}, "
        f"{doc['threads']} thread(s), {doc['rounds']} rounds x {doc['runs']} interleaved calls; load average "
        f"{doc['load_before'][0]:.2f} before, {doc['load_after'][0]:.2f} after. Ratio = PyTorch's time / ours "
        "(process CPU time, median over rounds, min..max); > 1: same_conv2d is faster. CL = channels-last.",
        "",
        "| model | conv | input | weight gradient: oneDNN / grouped conv | fwd+bwd: module / same_conv2d | "
        "float64 diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["cases"]:
        wg, st = r["weight_grad"], r["fwd_bwd"]
        lines.append(
            f"| {r['model']} | {r['conv']} | {r['input']} | {wg['onednn_ms']:.2f} / {wg['grouped_ms']:.2f} ms = "
            f"{wg['ratio']:.2f}x ({wg['spread'][0]:.2f}..{wg['spread'][1]:.2f}) | {st['module_ms']:.2f} / "
            f"{st['same_conv2d_ms']:.2f} ms = {st['ratio']:.2f}x ({st['spread'][0]:.2f}..{st['spread'][1]:.2f}) | "
            f"{r['float64_max_rel_diff']:.1e} |"
        )
    lines += ["", "Method: the docstring of benchmarks/same_conv.py (the `method` field of same_conv.json)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    doc: dict[str, Any] = {
        "benchmark": "same_conv",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "threads": args.threads,
        "rounds": args.rounds,
        "runs": args.runs,
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "environment": environment_info(),
        "method": __doc__,
    }
    doc["cases"] = []
    for case in CASES:
        row = run_case(case, args.rounds, args.runs)
        print(row, flush=True)
        doc["cases"].append(row)
    doc["load_after"] = [round(v, 2) for v in os.getloadavg()]
    save_results(args.results, "same_conv", doc, _markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
