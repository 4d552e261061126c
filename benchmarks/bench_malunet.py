"""CPU latency and peak memory of ``malunet`` at 256x256, batch 1 and 8, against a straightforward implementation.

What is measured (per implementation, batch size and intra-op thread count):

- ``forward``: eval mode under ``torch.no_grad()``.
- ``forward_backward``: train mode, ``logits.mean().backward()`` (gradients reset with ``set_to_none``; no optimizer).
- Latency: wall clock (``time.perf_counter``) after ``--warmup`` untimed iterations; median, IQR (q1, q3), min over
  ``--runs`` timed iterations, and the process CPU time per iteration. The two implementations are interleaved
  iteration by iteration, so load from other processes on a shared machine hits both alike. On a loaded machine
  the process CPU time (``time.process_time``) is the steadier figure: wall clock includes time descheduled, and
  with 2 threads CPU time includes OpenMP spin-waiting.
- Peak memory, two honest CPU measures (there is no ``max_memory_allocated`` on CPU):
  * ``tensor_peak_mib``: peak of live tensor bytes held by PyTorch's CPU allocator during one pass, from the
    ``torch.profiler`` memory timeline (``profile_memory=True``); ``tensor_peak_increase_mib`` subtracts what was
    live when the pass started (parameters, input). Allocator-level: excludes malloc overhead and library scratch
    that is not a tensor.
  * ``rss_peak_increase_mib``: in a fresh subprocess, the process peak RSS (``getrusage`` ru_maxrss) after one pass
    minus the RSS just before it (libraries warmed up by one 32x32 pass). OS-level: includes allocator caching,
    oneDNN scratch and any first-use cost at this shape.

Implementations:

- ``attnseg``: ``attnseg.models.malunet.MALUNet`` as shipped. Its only optimisation: without autograd, the 2x2
  max-pool runs PyTorch's channels-last CPU kernel (bitwise-identical values); with autograd it is plain NCHW
  ``F.max_pool2d`` (the layout copies would cost what the faster kernel saves), i.e. the straightforward path.
- ``straightforward``: the same module with that max-pool replaced by plain ``F.max_pool2d`` on NCHW. Every other
  op of ``MALUNet`` is already a one-to-one transcription of the architecture (docs/models/malunet.md §1-§2), so
  this is the straightforward implementation of it; the script checks both give identical outputs.

Usage: ``python benchmarks/bench_malunet.py [--threads 1] [--runs 20] [--out benchmarks/results/malunet.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

import attnseg.models.malunet as malunet_module
from attnseg.bench.speed import make_step, time_interleaved
from attnseg.models import create_model

__all__ = ["main"]

IMPLEMENTATIONS = ("attnseg", "straightforward")
MODES = ("forward", "forward_backward")
SIZE = 256
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "malunet.json"


def _plain_pool2(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2)


@contextlib.contextmanager
def _implementation(name: str) -> Iterator[None]:
    """Run the block with the module-level max-pool of ``malunet`` set for implementation ``name``."""
    shipped = malunet_module._pool2
    malunet_module._pool2 = shipped if name == "attnseg" else _plain_pool2
    try:
        yield
    finally:
        malunet_module._pool2 = shipped


def time_pair(batch: int, mode: str, runs: int, warmup: int) -> dict[str, dict[str, object]]:
    """Interleaved timing of both implementations for one (batch, mode) at the current thread count."""
    torch.manual_seed(0)
    model = create_model("malunet", in_channels=3, num_classes=1)
    x = torch.randn(batch, 3, SIZE, SIZE)
    step = make_step(model, x, mode)
    return time_interleaved({n: step for n in IMPLEMENTATIONS}, runs, warmup, context=_implementation, digits=2)


def tensor_peak(name: str, batch: int, mode: str) -> dict[str, float]:
    """Peak live tensor memory of one pass, from the torch.profiler memory timeline."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = create_model("malunet", in_channels=3, num_classes=1)
    x = torch.randn(batch, 3, SIZE, SIZE)
    step = make_step(model, x, mode)
    with _implementation(name):
        step()  # first-use allocations outside the profiled pass
        if mode == "forward_backward":
            model.zero_grad(set_to_none=True)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
            step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "timeline.json")
        with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115  (deprecation notice only)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)
    totals = [sum(row) for row in sizes]
    return {
        "tensor_peak_mib": round(max(totals) / 2**20, 2),
        "tensor_peak_increase_mib": round((max(totals) - totals[0]) / 2**20, 2),
    }


def _rss_child(name: str, batch: int, mode: str, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("malunet", in_channels=3, num_classes=1)
    with _implementation(name):
        make_step(model, torch.randn(batch, 3, 32, 32), mode)()  # warm libraries up at a tiny size
        model.zero_grad(set_to_none=True)
        x = torch.randn(batch, 3, SIZE, SIZE)
        step = make_step(model, x, mode)
        with open("/proc/self/statm") as f:
            rss_before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "rss_before_mib": round(rss_before / 2**20, 1),
                "rss_peak_mib": round(peak / 2**20, 1),
                "rss_peak_increase_mib": round((peak - rss_before) / 2**20, 1),
            }
        )
    )


def rss_peak(name: str, batch: int, mode: str, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--_rss-child", name, str(batch), mode, str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def check_identical() -> bool:
    torch.manual_seed(0)
    model = create_model("malunet", in_channels=3, num_classes=1).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    outs = []
    for name in IMPLEMENTATIONS:
        with _implementation(name), torch.no_grad():
            outs.append(model(x))
    return bool(torch.equal(outs[0], outs[1]))


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        default="1",
        help="comma-separated intra-op thread counts (default 1: on a shared 2-core machine, 2 OpenMP threads mostly "
        "measure spin-waiting for a descheduled peer; use e.g. 1,2 on a quiet machine)",
    )
    parser.add_argument("--runs", type=int, default=20, help="timed iterations per configuration (default 20)")
    parser.add_argument("--runs-b8", type=int, default=10, help="timed iterations at batch 8 (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--_rss-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._rss_child:
        name, batch, mode, threads = args._rss_child
        _rss_child(name, int(batch), mode, int(threads))
        return {}

    thread_counts = [int(t) for t in args.threads.split(",")]
    record: dict[str, object] = {
        "benchmark": "malunet CPU latency and peak memory, 256x256",
        "model": "malunet (in_channels=3, num_classes=1, defaults), float32, NCHW input",
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "warmup": args.warmup,
        "outputs_identical": check_identical(),
        "method": __doc__,
        "results": [],
    }
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for batch in (1, 8):
            runs = args.runs if batch == 1 else args.runs_b8
            for mode in MODES:
                timing = time_pair(batch, mode, runs, args.warmup)
                ref = timing["straightforward"]
                for name in IMPLEMENTATIONS:  # > 1: faster than the straightforward implementation
                    timing[name]["speedup_vs_straightforward"] = {
                        k: round(ref[k]["median_ms"] / timing[name][k]["median_ms"], 3) for k in ("wall", "process_cpu")
                    }
                for name in IMPLEMENTATIONS:
                    row = {"implementation": name, "threads": threads, "batch": batch, "mode": mode, **timing[name]}
                    if threads == thread_counts[0]:  # memory does not depend on the thread count much; once
                        row["memory"] = {**tensor_peak(name, batch, mode), **rss_peak(name, batch, mode, threads)}
                    record["results"].append(row)
                    print(json.dumps(row), flush=True)
    record["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(args.out)  # atomic
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
