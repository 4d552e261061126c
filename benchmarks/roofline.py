"""How far each model's training step is from this machine's limit: achieved GFLOP/s against the fp32 matmul peak.

One run measures, side by side:

- the **matmul peak**: the best of square fp32 ``torch.mm`` products (2 n^3 FLOPs each) over a few sizes, measured
  before *and* after the models, so a change of machine load between the two shows as a spread;
- each model's **training step** (forward + backward of a cross-entropy loss, batch ``--batch``, the model's default
  input size unless ``--size`` is given): its true FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions, matmuls and attention, forward and backward) divided by the median step time.

The fraction of the peak says how much of the step's time is spent at matmul speed. A model far below it is bound by
something else: memory traffic (small channel counts, elementwise chains, normalisation), small kernels, or Python
overhead. Writes ``benchmarks/results/roofline.json`` and ``.md``.

Usage: ``python benchmarks/roofline.py [--models unet mdsa_unet ...] [--batch 2] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from attnseg.bench.report import environment_info, save_results
from attnseg.models import create_model, model_info

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
DEFAULT_MODELS = ("unet", "mdsa_unet", "malunet", "nnunet_plain", "ja_denseunet_small", "salstm2d")


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> float:
    """The best fp32 GFLOP/s of square ``torch.mm`` over ``sizes`` (median of ``repeats`` per size)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
    return best


def _step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), target).backward()


def training_step(name: str, batch: int, size: tuple[int, ...] | None, repeats: int) -> dict[str, Any]:
    """FLOPs and median time of one fwd+bwd step of ``name`` (2 classes, 1 input channel)."""
    info = model_info(name)
    size = tuple(size or info.default_input_size)
    kwargs = info.size_kwargs(size) if info.size_kwargs is not None else {}
    torch.manual_seed(0)
    model = create_model(name, 1, 2, **kwargs).train()
    slab = getattr(model, "slab_size", None)
    x = torch.randn(batch, 1, *((int(slab),) if slab else ()), *size)
    target = torch.randint(0, 2, (batch, *size))
    counter = FlopCounterMode(display=False)
    with counter:
        _step(model, x, target)
    _step(model, x, target)  # warm-up (allocator, oneDNN primitives)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _step(model, x, target)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    flops = counter.get_total_flops()
    return {
        "model": name,
        "input": [batch, 1, *size],
        "gflop_per_step": round(flops / 1e9, 3),
        "step_seconds_median": round(seconds, 4),
        "step_seconds_spread": [round(min(times), 4), round(max(times), 4)],
        "achieved_gflops": round(flops / seconds / 1e9, 2),
    }


def markdown(doc: dict[str, Any]) -> str:
    peak = doc["matmul_peak_gflops"]
    lines = [
        "# Roofline: training-step GFLOP/s against the fp32 matmul peak",
        "",
        f"Generated {doc['created']} by `python benchmarks/roofline.py`; {doc['environment']['host']['cpu']}, "
        f"{doc['environment']['host']['torch_threads']} torch threads, load average {doc['load_average']} (start).",
        f"fp32 matmul peak: **{peak:.1f} GFLOP/s** (before the models {doc['matmul_peak_before']:.1f}, after "
        f"{doc['matmul_peak_after']:.1f}; the mean is used).",
        "",
        "| model | input | GFLOP / step (fwd+bwd) | step s (median) | achieved GFLOP/s | share of peak |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in doc["models"]:
        shape = "x".join(map(str, r["input"]))
        lines.append(
            f"| {r['model']} | {shape} | {r['gflop_per_step']:.2f} | {r['step_seconds_median']:.3f} | "
            f"{r['achieved_gflops']:.1f} | {100 * r['share_of_peak']:.0f} % |"
        )
    lines += [
        "",
        "The peak is what `torch.mm` reaches on square fp32 matrices of 1024 and 2048 here, a practical roof rather "
        "than the CPU's theoretical one: a share above 100 % means the model's convolutions (oneDNN) and attention "
        "kernels run faster than that reference. FLOPs count convolutions, matmuls and attention (forward and "
        "backward); elementwise work, normalisation and data movement are not counted, so a low share marks a "
        "memory- or overhead-bound step (small channel counts, many elementwise ops on large maps, small kernels).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs="+", default=None, help="input size for every model")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load = [round(v, 2) for v in os.getloadavg()]
    before = matmul_peak(repeats=args.repeats)
    rows = [training_step(m, args.batch, tuple(args.size) if args.size else None, args.repeats) for m in args.models]
    after = matmul_peak(repeats=args.repeats)
    peak = (before + after) / 2
    for r in rows:
        r["share_of_peak"] = round(r["achieved_gflops"] / peak, 4)
    doc = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "load_average": load,
        "matmul_peak_gflops": round(peak, 2),
        "matmul_peak_before": round(before, 2),
        "matmul_peak_after": round(after, 2),
        "models": rows,
        "environment": environment_info(),
    }
    save_results(args.results, "roofline", doc, markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
