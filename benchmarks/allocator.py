"""Training-step speed of attnseg models with glibc's default malloc settings and with ``attnseg.allocator``'s.

``attnseg.allocator.tune_allocator`` (called by the ``attnseg`` command line at start) fixes glibc's mmap threshold
at 32 MiB and its trim threshold at 1 GiB, so that activations freed at the end of a step are reused by the next one
instead of going back to the kernel and returning as freshly zero-filled pages.

Method: per model, two worker processes (``attnseg.bench.speed.ProcessTimer``), identical but for one call of
``tune_allocator()`` before the model is built in the ``tuned`` one; same weights (seed 0) and input. The parent
calls them round-robin, call by call: ``--rounds`` rounds of ``--warmup`` untimed and ``--runs`` timed training
steps each (train mode, forward, mean of the logits, backward, gradients reset with ``set_to_none``; no optimizer),
``--threads`` intra-op threads. Per round: the median wall time of each variant and their ratio default / tuned
(> 1: tuning is faster); reported: the median ratio over rounds with its spread (min..max), and the median minor page
faults per step of each variant (``ru_minflt``). ``os.getloadavg()`` before and after.

Writes ``benchmarks/results/allocator.json`` and ``.md``.

Usage: ``python benchmarks/allocator.py [--models unet,mdsa_unet,malunet,msa2net] [--rounds 7] [--runs 3]``
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from attnseg.bench.report import results_header, save_results
from attnseg.bench.speed import ProcessTimer, make_step

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODE = "forward_backward"
# model -> input (batch, channels, side): the sizes each model trains at in its paper's setting
INPUTS: dict[str, tuple[int, int, int]] = {
    "unet": (4, 1, 224),
    "mdsa_unet": (2, 1, 224),
    "malunet": (8, 3, 256),
    "msa2net": (2, 1, 224),
}
VARIANTS = ("default", "tuned")


def _worker_steps(model: str, variant: str) -> dict[str, Any]:
    """Timing-worker maker (runs in its own process)."""
    from attnseg.allocator import tune_allocator
    from attnseg.models import create_model

    if variant == "tuned" and not tune_allocator():
        raise RuntimeError("tune_allocator() did not apply (not glibc, or ATTNSEG_MALLOC_TUNING is off)")
    b, c, side = INPUTS[model]
    torch.manual_seed(0)
    net = create_model(model, in_channels=c, num_classes=2)
    x = torch.randn(b, c, side, side, generator=torch.Generator().manual_seed(1))
    return {MODE: make_step(net, x, MODE)}


def time_model(model: str, rounds: int, runs: int, warmup: int, threads: int) -> dict[str, Any]:
    makers = {v: functools.partial(_worker_steps, model, v) for v in VARIANTS}
    per_round = []
    with ProcessTimer(makers, threads=threads) as timer:
        for _ in range(rounds):
            t = timer.time(MODE, runs, warmup)
            per_round.append(
                {v: {"wall_ms": t[v]["wall"]["median_ms"], "faults": t[v]["minor_faults"]["median"]} for v in VARIANTS}
            )
    ratios = [r["default"]["wall_ms"] / r["tuned"]["wall_ms"] for r in per_round]
    b, c, side = INPUTS[model]
    return {
        "model": model,
        "input": f"{b}x{c}x{side}x{side}",
        "per_round": per_round,
        **{f"{v}_median_ms": round(statistics.median(r[v]["wall_ms"] for r in per_round), 1) for v in VARIANTS},
        **{f"{v}_faults_per_step": round(statistics.median(r[v]["faults"] for r in per_round)) for v in VARIANTS},
        "ratio_default_over_tuned": {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        },
    }


def markdown(doc: dict[str, Any]) -> str:
    host = doc["environment"]["host"]
    lines = [
        "# glibc malloc settings: default against `attnseg.allocator.tune_allocator`",
        "",
        f"Generated {doc['generated']} by `python benchmarks/allocator.py`; {host['cpu']} ({host['platform']}), "
        f"{doc['threads']} torch thread(s), load average {doc['load_average_start']} before, "
        f"{doc['load_average_end']} after. {doc['rounds']} rounds of {doc['runs']} interleaved training steps per "
        "variant, each variant in its own process; ratio = default / tuned median wall time per round (> 1: the "
        "tuned process is faster), median (min..max over rounds). Faults: median minor page faults per step.",
        "",
        "| model | input | default ms | tuned ms | default / tuned | faults per step, default | tuned |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for row in doc["models"]:
        r = row["ratio_default_over_tuned"]
        lines.append(
            f"| {row['model']} | {row['input']} | {row['default_median_ms']:.0f} | {row['tuned_median_ms']:.0f} | "
            f"{r['median']:.2f}x ({r['min']:.2f}..{r['max']:.2f}) | {row['default_faults_per_step']} | "
            f"{row['tuned_faults_per_step']} |"
        )
    lines += ["", "Method: the docstring of benchmarks/allocator.py.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(INPUTS), help=f"comma-separated, from {', '.join(INPUTS)}")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per model (default 7)")
    parser.add_argument("--runs", type=int, default=3, help="timed steps per variant and round (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant and round first (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: shared 2-core machine)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in INPUTS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(INPUTS)})")
    doc = results_header(
        "training step, glibc malloc defaults vs attnseg.allocator.tune_allocator, fp32 CPU",
        __doc__,
        threads=args.threads,
        rounds=args.rounds,
        runs=args.runs,
        warmup=args.warmup,
    )
    doc["models"] = []
    for model in models:
        row = time_model(model, args.rounds, args.runs, args.warmup, args.threads)
        doc["models"].append(row)
        print({k: v for k, v in row.items() if k != "per_round"}, file=sys.stderr, flush=True)
    doc["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    save_results(args.results, "allocator", doc, markdown(doc))
    return doc


if __name__ == "__main__":
    main()
