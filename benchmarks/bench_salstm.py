"""Benchmark of the SALSTM/LSTMSA head: official-order computation vs the step-0 shortcut (issue 7, Performance).

Setting (docs/models/salstm.md §5): the released head at 224x224 with 64 channels, 3 slices, batch 1, CPU, fp32.
The reference path (``step0_shortcut=False``) is the official order: a full 5x5 gate conv on ``[x; h=0]`` at step 0
and the forget gate multiplied by ``c=0``. Both paths share the weights; outputs and gradients are compared before
timing.

Measures, for each variant (salstm, lstmsa) and path: forward (no grad) and forward+backward latency (median and
min of ``--repeats`` after a warm-up; inputs require grad, as features coming from a backbone do) and the peak
memory of one forward+backward, measured by the allocator profiler (``torch.profiler`` memory events). Latency is
recorded as wall time and as process CPU time (all threads); on a shared machine the CPU time is the robust one.

Usage::

    python benchmarks/bench_salstm.py [--size 224] [--channels 64] [--repeats 5] [--threads 2]

Writes ``benchmarks/results/salstm.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from attnseg.models.salstm import BiTransLSTMHead

__all__ = ["main"]


def _time(fn, repeats: int) -> dict[str, float]:
    """Wall and process-CPU seconds (all threads); CPU time is the robust figure on a shared, loaded machine."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "median_s": statistics.median(wall),
        "min_s": min(wall),
        "cpu_median_s": statistics.median(cpu),
        "cpu_min_s": min(cpu),
        "all_wall_s": wall,
        "all_cpu_s": cpu,
    }


def _peak_memory_bytes(fn) -> int:
    """Peak of live CPU allocations during ``fn`` (allocator events recorded by the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live, peak = 0, 0
    events = sorted((e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)), key=lambda e: e.time_range.start)
    for e in events:
        live += e.cpu_memory_usage
        peak = max(peak, live)
    return peak


def bench_variant(variant: str, size: int, channels: int, repeats: int) -> dict:
    torch.manual_seed(0)
    head = BiTransLSTMHead(channels, 4, channels, variant=variant)
    slab = torch.randn(1, 3, channels, size, size)

    def run(shortcut: bool, backward: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        head.step0_shortcut = shortcut
        x = slab.clone().requires_grad_(backward)
        if not backward:
            with torch.no_grad():
                return head(x), None
        head.zero_grad(set_to_none=True)
        y = head(x)
        y.square().mean().backward()
        return y.detach(), x.grad

    # Equal outputs (and input / weight gradients) before any timing.
    y_ref, g_ref = run(False, True)
    w_ref = head.forward_net.cell.conv.weight.grad.clone()
    y_new, g_new = run(True, True)
    w_new = head.forward_net.cell.conv.weight.grad.clone()
    check = {
        "max_abs_diff_output": float((y_ref - y_new).abs().max()),
        "max_abs_output": float(y_ref.abs().max()),
        "max_abs_diff_input_grad": float((g_ref - g_new).abs().max()),
        "max_abs_input_grad": float(g_ref.abs().max()),
        "max_abs_diff_gate_weight_grad": float((w_ref - w_new).abs().max()),
    }
    out: dict = {"equality": check}
    for name, shortcut in (("official_order", False), ("ours", True)):
        out[name] = {
            "forward": _time(lambda s=shortcut: run(s, False), repeats),
            "forward_backward": _time(lambda s=shortcut: run(s, True), repeats),
            "peak_memory_fwd_bwd_MiB": _peak_memory_bytes(lambda s=shortcut: run(s, True)) / 2**20,
        }
    for phase in ("forward", "forward_backward"):
        ref, new = out["official_order"][phase], out["ours"][phase]
        for stat in ("median_s", "min_s", "cpu_median_s", "cpu_min_s"):
            out[f"speedup_{phase}_{stat[:-2]}"] = ref[stat] / new[stat]
    out["memory_ratio"] = out["ours"]["peak_memory_fwd_bwd_MiB"] / out["official_order"]["peak_memory_fwd_bwd_MiB"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["salstm", "lstmsa"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "salstm.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "benchmark": "SALSTM/LSTMSA head, official-order (reference path) vs step-0 shortcut",
        "setting": {
            "batch": 1,
            "slices": 3,
            "channels": args.channels,
            "size": [args.size, args.size],
            "dtype": "float32",
            "device": "cpu",
            "threads": args.threads,
            "repeats": args.repeats,
            "target": "ours >= 1.4x faster forward+backward at equal outputs",
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "results": {v: bench_variant(v, args.size, args.channels, args.repeats) for v in args.variants},
    }
    result["environment"]["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for v, r in result["results"].items():
        ref, new = r["official_order"], r["ours"]
        print(
            f"{v}: CPU-s fwd {ref['forward']['cpu_median_s']:.2f} -> {new['forward']['cpu_median_s']:.2f} "
            f"(x{r['speedup_forward_cpu_median']:.2f}); fwd+bwd {ref['forward_backward']['cpu_median_s']:.2f} -> "
            f"{new['forward_backward']['cpu_median_s']:.2f} (x{r['speedup_forward_backward_cpu_median']:.2f}, "
            f"min x{r['speedup_forward_backward_cpu_min']:.2f}); wall fwd+bwd x"
            f"{r['speedup_forward_backward_median']:.2f}; peak mem {ref['peak_memory_fwd_bwd_MiB']:.0f} -> "
            f"{new['peak_memory_fwd_bwd_MiB']:.0f} MiB; max|dy| {r['equality']['max_abs_diff_output']:.2e}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
