"""CPU speed of ``malunet`` against the official MALUNet and against its own reference path, plus peak memory.

Implementations (same weights: the official model's initial state dict, loaded into ours with
``attnseg.models.from_official``; same input):

- ``official``: ``models.malunet.MALUNet`` of github.com/JCruan519/MALUNet at commit e184b47, imported at run time
  from ``--official DIR`` (the directory is put on ``sys.path``; nothing of it is copied). Its forward ends with a
  sigmoid.
- ``attnseg``: ``attnseg.models.malunet.MALUNet`` as shipped (``impl="fast"``; see the model's module docstring and
  docs/models/malunet.md "Fast CPU path"), with ``torch.sigmoid`` applied to its logits so both do the same work.
- ``reference``: ours with ``impl="reference"`` (the official op sequence; the "straightforward" implementation of
  earlier versions of this script).

What is measured, per batch size (1 and 8) at 256x256, 3 input channels, 1 class, fp32, ``--threads`` intra-op
threads (default 1):

- ``forward``: eval mode under ``torch.no_grad()``.
- ``forward_backward``: train mode, ``probabilities.mean().backward()``, gradients reset with ``set_to_none`` inside
  the timed call; no optimizer.
- Before timing, outputs and parameter gradients of ``attnseg`` and ``reference`` are compared with the official
  ones: output max |diff| / max |official output|; gradient max |diff| over all parameters / the largest official
  gradient entry (a per-tensor ratio is meaningless for the IEA input-projection biases, whose gradient is exactly
  zero in real arithmetic: the softmax over pixels cancels them, so both sides hold rounding noise only).
- Latency: ``--rounds`` rounds; each implementation runs in its own worker process (``attnseg.bench.speed.
  ProcessTimer``: one heap per implementation, so none runs on the allocator state another left), the
  implementations called round-robin, call by call, ``--warmup`` untimed calls then ``--runs`` timed ones; each
  round takes the per-round median
  wall time of each implementation. The speed ratio official / ours is computed per round; we report its median
  and its spread (min..max over rounds), for wall time and for process CPU time (``time.process_time``, steadier on
  a shared machine: it excludes time the process was descheduled). ``os.getloadavg()`` is recorded before and
  after.
- Profile: ``torch.profiler`` top ops by self CPU time of one batch-8 forward+backward call of ``official`` and
  ``attnseg`` (after one untimed call).
- Peak memory of one call (unless ``--no-memory``), two CPU measures (there is no ``max_memory_allocated`` on CPU):
  ``tensor_peak_increase_mib``, the peak of live tensor bytes over what was live at the start, from the profiler's
  memory timeline (allocator level); ``rss_peak_increase_mib``, the peak RSS (``ru_maxrss``) increase of one call in
  a fresh subprocess after a 32x32 warm-up call (OS level: allocator caching and oneDNN scratch included).

Writes ``benchmarks/results/malunet.json`` and ``.md`` (``attnseg.bench.report.save_results``).

Usage: ``python benchmarks/bench_malunet.py [--official /work/.official/MALUNet] [--threads 1] [--rounds 5]
[--runs 3] [--warmup 1] [--no-memory]``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from attnseg.bench.report import results_header, save_results
from attnseg.bench.speed import ProcessTimer, make_step
from attnseg.models import from_official
from attnseg.models.malunet import _rename_official  # the official-weights loader's key map

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OFFICIAL = Path("/work/.official/MALUNet")
OFFICIAL_CLASS = "models.malunet.MALUNet"
IMPLEMENTATIONS = ("official", "attnseg", "reference")
MODES = ("forward", "forward_backward")
SIZE = 256


def import_official(folder: Path) -> type:
    """The official ``MALUNet`` class, imported from ``folder`` (exit 2 with one line when it is missing)."""
    if not (folder / "models" / "malunet.py").is_file():
        print(f"official MALUNet code not found: {folder}/models/malunet.py (pass --official DIR)", file=sys.stderr)
        raise SystemExit(2)
    sys.path.insert(0, str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecated import path in the official file
        from models.malunet import MALUNet  # type: ignore[import-not-found]
    return MALUNet


def build(name: str, official_cls: type, seed: int = 0) -> torch.nn.Module:
    """Implementation ``name`` with the weights of a seeded official model."""
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructor prints a line
        official = official_cls(num_classes=1, input_channels=3)
    if name == "official":
        return official
    impl = "fast" if name == "attnseg" else "reference"
    return _Probabilities(from_official(OFFICIAL_CLASS, official.state_dict(), impl=impl))


class _Probabilities(torch.nn.Module):
    """Ours + sigmoid: the official forward's output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameter gradients by our state-dict key (official keys renamed by the official-weights loader's map)."""
    grads = {}
    for key, p in model.named_parameters():
        ours = key.removeprefix("model.") if key.startswith("model.") else _rename_official(key)
        grads[ours] = p.grad.detach().clone()
    return grads


def check_equal(official_cls: type, batch: int = 4) -> dict[str, Any]:
    """Outputs (eval) and gradients (train) of ours against the official model, same weights and input (batch 4:
    the fast backward kernels are used from batch 4 on)."""
    models = {n: build(n, official_cls) for n in IMPLEMENTATIONS}
    x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    out, grads = {}, {}
    for name, model in models.items():
        with torch.no_grad():
            out[name] = model.eval()(x)
        model.train().zero_grad(set_to_none=True)
        model(x).mean().backward()
        grads[name] = _grads(model)
    scale_out = out["official"].abs().max().item()
    scale_grad = max(g.abs().max().item() for g in grads["official"].values())
    report: dict[str, Any] = {"batch": batch, "official_output_max": scale_out, "official_grad_max": scale_grad}
    for name in IMPLEMENTATIONS[1:]:
        report[name] = {
            "output_max_rel_diff": (out[name] - out["official"]).abs().max().item() / scale_out,
            "grad_max_rel_diff": max((g - grads["official"][k]).abs().max().item() for k, g in grads[name].items())
            / scale_grad,
        }
    return report


def _worker_steps(name: str, folder: Path, batch: int, mode: str) -> dict[str, Any]:
    """Timing-worker maker (its own process): implementation ``name`` and the benchmark input."""
    x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return {mode: make_step(build(name, import_official(folder)), x, mode)}


def time_rounds(
    folder: Path, batch: int, mode: str, rounds: int, runs: int, warmup: int, threads: int
) -> dict[str, Any]:
    """``rounds`` interleaved timings, each implementation in its own worker process; per-round medians and
    per-round ratios official / ours."""
    makers = {n: functools.partial(_worker_steps, n, folder, batch, mode) for n in IMPLEMENTATIONS}
    per_round: list[dict[str, dict[str, float]]] = []
    with ProcessTimer(makers, threads=threads) as timer:
        for _ in range(rounds):
            t = timer.time(mode, runs, warmup)
            per_round.append({n: {k: t[n][k]["median_ms"] for k in ("wall", "process_cpu")} for n in IMPLEMENTATIONS})
    out: dict[str, Any] = {
        "batch": batch,
        "mode": mode,
        "rounds": rounds,
        "runs_per_round": runs,
        "per_round": per_round,
    }
    for name in IMPLEMENTATIONS:
        out[f"{name}_median_ms"] = {
            k: round(statistics.median(r[name][k] for r in per_round), 2) for k in ("wall", "process_cpu")
        }
    for name in IMPLEMENTATIONS[1:]:
        ratios = {}
        for k in ("wall", "process_cpu"):
            vals = [r["official"][k] / r[name][k] for r in per_round]
            ratios[k] = {
                "median": round(statistics.median(vals), 3),
                "min": round(min(vals), 3),
                "max": round(max(vals), 3),
            }
        out[f"ratio_official_over_{name}"] = ratios
    return out


def profile_top(official_cls: type, name: str, rows: int = 12) -> list[dict[str, Any]]:
    """Top ops by self CPU time of one batch-8 forward+backward call."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    step = make_step(build(name, official_cls), x, "forward_backward")
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls": e.count,
        }
        for e in events[:rows]
    ]


def tensor_peak(official_cls: type, name: str, batch: int, mode: str) -> dict[str, float]:
    """Peak live tensor memory of one call, from the torch.profiler memory timeline."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(batch, 3, SIZE, SIZE)
    model = build(name, official_cls)
    step = make_step(model, x, mode)
    step()  # first-use allocations outside the profiled call
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "timeline.json")
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)
    totals = [sum(row) for row in sizes]
    return {"tensor_peak_increase_mib": round((max(totals) - totals[0]) / 2**20, 2)}


def _rss_child(official: str, name: str, batch: int, mode: str, threads: int) -> None:
    torch.set_num_threads(threads)
    model = build(name, import_official(Path(official)))
    make_step(model, torch.randn(batch, 3, 32, 32), mode)()  # warm libraries up at a tiny size
    model.zero_grad(set_to_none=True)
    step = make_step(model, torch.randn(batch, 3, SIZE, SIZE), mode)
    with open("/proc/self/statm") as f:
        rss_before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"rss_peak_increase_mib": round((peak - rss_before) / 2**20, 1)}))


def rss_peak(official: Path, name: str, batch: int, mode: str, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--_rss-child", str(official), name, str(batch), mode, str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def markdown(doc: dict[str, Any]) -> str:
    eq = doc["equality"]
    lines = [
        "# MALUNet CPU speed: attnseg vs the official code",
        "",
        f"256x256, 3 channels, 1 class, fp32, {doc['threads']} thread(s); {doc['rounds']} rounds x {doc['runs']} "
        f"interleaved calls per implementation; load average {doc['load_average_start']} before, "
        f"{doc['load_average_end']} after ({doc['environment']['host']['logical_cpus']} logical CPUs, shared). "
        "Ratio = official time / ours per round: median (min..max over rounds).",
        "",
        "| batch | mode | official ms | attnseg ms | ratio wall | ratio CPU | reference ms | official / reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["timing"]:
        a, ref = r["ratio_official_over_attnseg"], r["ratio_official_over_reference"]
        lines.append(
            f"| {r['batch']} | {r['mode']} | {r['official_median_ms']['wall']} | {r['attnseg_median_ms']['wall']} | "
            f"{a['wall']['median']} ({a['wall']['min']}..{a['wall']['max']}) | "
            f"{a['process_cpu']['median']} ({a['process_cpu']['min']}..{a['process_cpu']['max']}) | "
            f"{r['reference_median_ms']['wall']} | "
            f"{ref['wall']['median']} ({ref['wall']['min']}..{ref['wall']['max']}) |"
        )
    lines += [
        "",
        f"Equality before timing (batch {eq['batch']}, same weights and input), relative to the official maxima:",
        "",
        "| ours | output max rel diff | gradient max rel diff |",
        "|---|---|---|",
    ]
    for name in IMPLEMENTATIONS[1:]:
        lines.append(f"| {name} | {eq[name]['output_max_rel_diff']:.2e} | {eq[name]['grad_max_rel_diff']:.2e} |")
    for name, rows in doc["profile_top_ops"].items():
        lines += [
            "",
            f"Top ops by self CPU time, {name}, batch 8 forward+backward (one profiled call):",
            "",
            "| op | self CPU ms | share | calls |",
            "|---|---|---|---|",
        ]
        lines += [f"| `{r['op']}` | {r['self_cpu_ms']} | {r['share']:.1%} | {r['calls']} |" for r in rows]
    if doc.get("memory"):
        lines += ["", "Peak memory of one call (MiB above the start):", "", "| impl | batch | mode | tensors | RSS |"]
        lines.append("|---|---|---|---|---|")
        for m in doc["memory"]:
            lines.append(
                f"| {m['implementation']} | {m['batch']} | {m['mode']} | {m['tensor_peak_increase_mib']} | "
                f"{m['rss_peak_increase_mib']} |"
            )
    lines += [
        "",
        "Method: the `method` field of malunet.json (the docstring of benchmarks/bench_malunet.py).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=DEFAULT_OFFICIAL, help="folder of the official repository")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: shared 2-core machine)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per configuration (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per implementation and round (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per round first (default 1)")
    parser.add_argument("--batches", default="8,1", help="comma-separated batch sizes (default 8,1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measures")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--_rss-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._rss_child:
        official, name, batch, mode, threads = args._rss_child
        _rss_child(official, name, int(batch), mode, int(threads))
        return {}
    official_cls = import_official(args.official)
    torch.set_num_threads(args.threads)
    doc = results_header(
        "malunet vs official MALUNet, CPU latency, 256x256",
        __doc__,
        official={"repo": "JCruan519/MALUNet", "commit": "e184b47", "folder": str(args.official)},
        threads=args.threads,
        rounds=args.rounds,
        runs=args.runs,
        warmup=args.warmup,
    )
    doc["equality"] = check_equal(official_cls)
    print(json.dumps(doc["equality"]), flush=True)
    doc["timing"] = []
    for batch in (int(b) for b in args.batches.split(",")):
        for mode in reversed(MODES):
            row = time_rounds(args.official, batch, mode, args.rounds, args.runs, args.warmup, args.threads)
            doc["timing"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_round"}), flush=True)
    doc["profile_top_ops"] = {n: profile_top(official_cls, n) for n in ("official", "attnseg")}
    doc["memory"] = []
    if not args.no_memory:
        for batch in (1, 8):
            for mode in MODES:
                for name in IMPLEMENTATIONS:
                    m = {"implementation": name, "batch": batch, "mode": mode}
                    m.update(tensor_peak(official_cls, name, batch, mode))
                    m.update(rss_peak(args.official, name, batch, mode, args.threads))
                    doc["memory"].append(m)
    doc["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    save_results(args.results, "malunet", doc, markdown(doc))
    return doc


if __name__ == "__main__":
    main()
