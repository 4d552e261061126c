"""CPU latency and peak memory of ``msa2net`` at 224x224, batch 1: executed modules only vs the official dead modules.

Builds compared (both the paper decoder, proper transposes, gray input repeated to RGB):

- ``executed_only``: ``create_model("msa2net", 1, 9)``, our default (76,606,666 parameters).
- ``with_dead_modules``: ``keep_dead_modules=True``, as the official file builds it (112,767,981 parameters): the 1/32
  stage's projection, MASAG, LayerNorm and two DAE-Former blocks and the backbone's gray conv exist but never run.

Both share the executed weights (the script checks that their outputs are identical), so any difference comes from
the dead parameters alone.

What is measured:

- ``forward``: eval mode under ``torch.no_grad()``.
- ``forward_backward``: train mode, ``logits.mean().backward()`` with gradients reset to None (no optimizer step; dead
  parameters get no gradient, so a plain SGD step would not allocate state for them either).
- Latency: wall clock (``time.perf_counter``) and process CPU time (``time.process_time``) after ``--warmup`` untimed
  iterations; median, quartiles and min over ``--runs`` iterations. The two builds are interleaved iteration by
  iteration so that load from other processes on a shared machine hits both alike. On a loaded machine the minimum
  and the CPU time are the steadier figures.
- Memory, in a fresh subprocess per (build, mode): resident set size before and after building the model (its
  footprint) and the peak resident set (``VmHWM``) over two passes at 224 (a high-water mark, so first-use library
  allocations of the first pass are included; the model only accepts 224, so there is no smaller warm-up shape).
  ``param_mib`` is the exact parameter + buffer size.

Usage: ``python benchmarks/bench_msa2net.py [--threads 1] [--runs 10] [--out benchmarks/results/msa2net.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from attnseg.bench.speed import make_step, time_interleaved
from attnseg.models import create_model

__all__ = ["main"]

BUILDS = {"executed_only": {}, "with_dead_modules": {"keep_dead_modules": True}}
MODES = ("forward", "forward_backward")
SIZE = 224
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "msa2net.json"


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("msa2net", in_channels=1, num_classes=9, **BUILDS[name])


def _build_pair() -> dict[str, torch.nn.Module]:
    """Both builds with identical executed weights (the executed-only state dict is a subset of the other's)."""
    dead = _build("with_dead_modules")
    executed = _build("executed_only")
    full = dead.state_dict()
    executed.load_state_dict({k: full[k] for k in executed.state_dict()}, strict=True)
    return {"executed_only": executed, "with_dead_modules": dead}


def time_builds(models: dict[str, torch.nn.Module], mode: str, runs: int, warmup: int) -> dict[str, dict]:
    x = torch.randn(1, 1, SIZE, SIZE)
    steps = {name: make_step(m, x, mode) for name, m in models.items()}
    result = time_interleaved(steps, runs, warmup, digits=1)
    for m in models.values():
        m.zero_grad(set_to_none=True)
    return result


def _status_mib(field: str) -> float:
    # VmRSS: current resident set; VmHWM: its high-water mark for this process image. (getrusage's ru_maxrss would
    # inherit the parent's peak across fork+exec, which here holds both models.)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(name: str, mode: str, threads: int) -> None:
    torch.set_num_threads(threads)
    before = _status_mib("VmRSS")
    model = _build(name)
    built = _status_mib("VmRSS")
    param_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    step = make_step(model, torch.randn(1, 1, SIZE, SIZE), mode)
    step()  # warm-up pass (its peak counts too: VmHWM is a high-water mark)
    step()
    peak = _status_mib("VmHWM")
    print(
        json.dumps(
            {
                "param_mib": round(param_bytes / 2**20, 1),
                "rss_before_build_mib": round(before, 1),
                "rss_after_build_mib": round(built, 1),
                "rss_peak_mib": round(peak, 1),
                "rss_peak_over_built_mib": round(peak - built, 1),
            }
        )
    )


def memory(name: str, mode: str, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--_memory-child", name, mode, str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1", help="comma-separated intra-op thread counts (default 1)")
    parser.add_argument("--runs", type=int, default=10, help="timed iterations per build and mode (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--_memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._memory_child:
        name, mode, threads = args._memory_child
        _memory_child(name, mode, int(threads))
        return {}

    thread_counts = [int(t) for t in args.threads.split(",")]
    models = _build_pair()
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        outs = [m.eval()(x) for m in models.values()]
    record: dict[str, object] = {
        "benchmark": "msa2net CPU latency and peak memory, 224x224, batch 1",
        "model": "msa2net (in_channels=1, num_classes=9, paper decoder), float32",
        "param_counts": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
        "outputs_identical": bool(torch.equal(outs[0], outs[1])),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "warmup": args.warmup,
        "method": __doc__,
        "results": [],
    }
    print(json.dumps({k: record[k] for k in ("param_counts", "outputs_identical", "load_average_start")}), flush=True)
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for mode in MODES:
            timing = time_builds(models, mode, args.runs, args.warmup)
            for name in models:
                row = {"build": name, "threads": threads, "batch": 1, "mode": mode, **timing[name]}
                if threads == thread_counts[0]:
                    row["memory"] = memory(name, mode, threads)
                record["results"].append(row)
                print(json.dumps(row), flush=True)
    record["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
