"""How far can MASAG get past the official module? The share of its training step spent in kernels both share.

MASAG (MSA²Net paper, Fig. 2) runs, in training mode, five convolutions (depthwise 3x3, dense dilated 3x3, three
1x1) and seven BatchNorms with batch statistics; the official ``MultiScaleGatedAttn`` calls the same oneDNN / ATen
kernels on the same shapes (same parameters, same maps). attnseg's gains come from everything else (fused
selection, SiLU for the sigmoid products, fewer temporaries). If the convolutions and BatchNorms of our step take a
share ``s`` of its time and the official step takes ``r`` times ours, no rewrite of the other ops can give more than
``r / s`` (Amdahl's law, all other ops at zero cost): the bound this script reports.

Method: our MASAG at the sizes of the 224x224 model at batch 2 (``bench_msa2net_modules.py``'s realistic cases:
96 ch at 56x56, 192 at 28x28, 384 at 14x14), train mode, forward and backward of a fixed random upstream gradient;
three warm-up steps, then ``--steps`` steps under ``torch.profiler``; share = self CPU time of the ``aten::`` ops
whose name holds ``conv`` or ``batch_norm`` / the self CPU time of all ops. ``r`` is the fwd+bwd ratio that
``bench_msa2net_modules.py`` recorded in ``benchmarks/results/msa2net_modules.json`` (wall and process CPU time).
One intra-op thread by default. Writes ``benchmarks/results/masag_bound.{json,md}``.

Usage: ``python benchmarks/masag_bound.py [--threads 1] [--steps 5]``
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.profiler import profile

from attnseg.bench.report import environment_info, save_results
from attnseg.models.msa2net import MASAG

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CASES = ((96, 56), (192, 28), (384, 14))  # (channels, side) of the 224x224 model's MASAGs at 1/4, 1/8, 1/16
SHARED = ("conv", "batch_norm")  # kernels the official module calls on the same shapes


def shared_share(channels: int, side: int, steps: int, batch: int = 2) -> dict[str, float]:
    """Self-CPU shares of convolutions, BatchNorms and the rest in our MASAG's training step."""
    torch.manual_seed(0)
    module = MASAG(channels).train()
    x, g = (torch.randn(batch, channels, side, side, requires_grad=True) for _ in range(2))
    upstream = torch.randn(batch, channels, side, side)

    def step() -> None:
        module(x, g).backward(upstream)
        module.zero_grad(set_to_none=True)
        x.grad = g.grad = None

    for _ in range(3):
        step()
    with profile() as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
    norm = sum(e.self_cpu_time_total for e in events if "batch_norm" in e.key)
    return {"conv": conv / total, "batch_norm": norm / total, "shared": (conv + norm) / total}


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# MASAG: the bound on its speed-up over the official module (training step)",
        "",
        f"Generated {doc['created']} by `python benchmarks/masag_bound.py`; {doc['threads']} thread(s), load average "
        f"{doc['load_before'][0]:.2f} before, {doc['load_after'][0]:.2f} after. Share = self CPU time of the "
        "convolutions and BatchNorms (kernels the official module calls on the same shapes) in our fwd+bwd step; "
        "ratio = official / ours from `msa2net_modules.json`; bound = ratio / share, the largest ratio possible if "
        "every other op of ours cost nothing. Method: the docstring of benchmarks/masag_bound.py.",
        "",
        "| case | conv share | BN share | shared | ratio wall (CPU) | bound wall (CPU) | 1.2x reachable |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in doc["results"]:
        reachable = "-" if r["bound_cpu"] is None else ("yes" if max(r["bound_wall"], r["bound_cpu"]) >= 1.2 else "no")
        ratio = f"{r['ratio_wall']:.2f} ({r['ratio_cpu']:.2f})" if r["ratio_wall"] else "-"
        bound = f"{r['bound_wall']:.2f} ({r['bound_cpu']:.2f})" if r["bound_wall"] else "-"
        lines.append(
            f"| {r['case']} | {100 * r['conv']:.1f} % | {100 * r['batch_norm']:.1f} % | {100 * r['shared']:.1f} % | "
            f"{ratio} | {bound} | {reachable} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    measured = json.loads((RESULTS / "msa2net_modules.json").read_text())
    ratios = {r["case"]: r["forward_backward"] for r in measured["results"]}
    load_before = list(os.getloadavg())
    results = []
    for channels, side in CASES:
        case = f"masag_c{channels}_{side}"
        share = shared_share(channels, side, args.steps)
        fb = ratios.get(case)
        wall, cpu = (fb["ratio_median"], fb["cpu_ratio_median"]) if fb else (None, None)
        results.append(
            {
                "case": case,
                **share,
                "ratio_wall": wall,
                "ratio_cpu": cpu,
                "bound_wall": wall / share["shared"] if wall else None,
                "bound_cpu": cpu / share["shared"] if cpu else None,
            }
        )
    doc = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "benchmark": "masag_bound",
        "threads": args.threads,
        "steps": args.steps,
        "load_before": load_before,
        "load_after": list(os.getloadavg()),
        "ratios_from": {"file": "benchmarks/results/msa2net_modules.json", "created": measured.get("created")},
        "results": results,
        "environment": environment_info(),
    }
    save_results(RESULTS, "masag_bound", doc, markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
