"""MDSA-UNet CPU benchmark: fast vs reference attention path, and MDSA vs dense attention scaling.

Part 1 (model): the released MDSA-UNet (6.58 M params) at 224x224, batch 1 and 8: forward (eval, no_grad) and
forward+backward (train mode, mean-logit loss) latency and peak memory, ``attn_impl="fast"`` vs ``"reference"``.

Part 2 (scaling): one MDSA attention module at the E2b/D1b geometry (C=320, 10 heads, top-k 4; the routed stage,
feature map = input / 8) at inputs 224, 448 and 896, forward+backward, versus dense global attention at the same
width (the same module with one region, i.e. every token attends to every token, also through SDPA), for the
released fixed 7x7 grid and for ``n_win="auto"`` (fixed 8-token region size, grid grows with the input).

Measurement: every configuration runs in a fresh subprocess (so peak RSS is per configuration) with one intra-op
thread (default): on this shared 2-core machine two OpenMP threads made latencies erratic by up to 10x whenever the
other core was taken. Reported per configuration:
- wall-clock latency (median and min over ``--reps`` runs after one warm-up) and process CPU time (median); CPU time
  is the figure least distorted by other jobs, wall time is what a user waits;
- peak tensor memory: the largest total size of live tensors allocated during one step, tracked exactly by a
  ``TorchDispatchMode`` (parameters and the input excluded; parameter gradients included);
- peak RSS increase of the process over its baseline after construction (includes allocator caching).

Usage::

    python benchmarks/bench_mdsa_unet.py            # full run, writes benchmarks/results/mdsa_unet.{json,md}
    python benchmarks/bench_mdsa_unet.py --quick    # fewer reps, smaller batch for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"


# ---- worker side ------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_tensor_bytes(step) -> int:
    """Largest total size of live tensor storages created while ``step()`` runs (exact, via dispatch tracking)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class PeakTracker(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = 0
            self.peak = 0
            self.sizes: dict[int, int] = {}

        def _track(self, t: torch.Tensor) -> None:
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.sizes:
                return
            self.sizes[key] = storage.nbytes()
            self.live += self.sizes[key]
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)

        def _free(self, key: int) -> None:
            self.live -= self.sizes.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                    self._track(t)
            return out

    tracker = PeakTracker()
    with tracker:
        step()
    return tracker.peak


def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    from attnseg.models import create_model
    from attnseg.models.mdsa_unet import MultiScaleDynamicSparseAttention

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    if cfg["kind"] == "model":
        model = create_model("mdsa_unet", in_channels=3, num_classes=1, attn_impl=cfg["impl"])
        x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"])
        params = list(model.parameters())
        if cfg["mode"] == "fwd":
            model.eval()

            def step() -> None:
                with torch.no_grad():
                    model(x)

        else:
            model.train()

            def step() -> None:
                for p in params:
                    p.grad = None
                model(x).mean().backward()

    else:  # one attention module at the E2b/D1b geometry (C=320, 10 heads, top-k 4), feature map = input / 8
        side = cfg["size"] // 8
        impl = cfg["impl"]
        if cfg["variant"] in ("dense", "dense_naive"):
            topk, grid = 1, (1, 1)  # one region: every token attends to all tokens
            # dense: SDPA (flash-style CPU kernel, no N x N matrix kept); dense_naive: softmax(QK^T)V materialised
            impl = "reference" if cfg["variant"] == "dense_naive" else "fast"
        elif cfg["variant"] == "mdsa_nwin7":
            topk, grid = 4, (7, 7)
        else:  # mdsa_auto: region side 4 tokens at stride 8 (= region_size 8 at stride 4)
            topk, grid = 4, (side // 4, side // 4)
        attn = MultiScaleDynamicSparseAttention(320, 10, topk, attn_impl=impl).train()
        x = torch.randn(cfg["batch"], side, side, 320, requires_grad=True)
        params = list(attn.parameters())

        def step() -> None:
            for p in params:
                p.grad = None
            x.grad = None
            attn(x, grid).mean().backward()

    base_rss = _rss_bytes()
    step()  # warm-up
    walls, cpus = [], []
    for _ in range(cfg["reps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_tensor = _peak_tensor_bytes(step)
    return {
        **cfg,
        "wall_s": walls,
        "wall_median_s": statistics.median(walls),
        "wall_min_s": min(walls),
        "cpu_median_s": statistics.median(cpus),
        "peak_tensor_MiB": peak_tensor / 2**20,
        "peak_rss_increase_MiB": max(0, peak_rss - base_rss) / 2**20,
    }


# ---- driver side ------------------------------------------------------------------------------------------------


def _run(cfg: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {cfg}:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  {cfg['kind']:5s} {cfg.get('impl', ''):9s} {cfg.get('variant', ''):10s} {cfg['mode']:7s} "
        f"B={cfg['batch']} {cfg['size']}: wall {result['wall_median_s']:.3f}s (min {result['wall_min_s']:.3f}) "
        f"cpu {result['cpu_median_s']:.3f}s peak {result['peak_tensor_MiB']:.1f} MiB "
        f"rss +{result['peak_rss_increase_MiB']:.0f} MiB",
        flush=True,
    )
    return result


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# MDSA-UNet CPU benchmark",
        "",
        f"torch {env['torch']}, {env['threads']} intra-op thread(s), {env['cpu_count']} cores shared with other jobs "
        f"(load average {env['load_before'][0]:.1f} before, {env['load_after'][0]:.1f} after). Wall = median (min) "
        f"over {env['reps']} runs; CPU = median process CPU time; peak = largest live tensor total during one step "
        "(exact, dispatch-tracked); RSS = peak process RSS increase. Generated by `benchmarks/bench_mdsa_unet.py`.",
        "",
        "## Released model, 224x224: fast vs reference attention path",
        "",
        "| batch | step | path | wall s | CPU s | peak tensor MiB | peak RSS +MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["model"]:
        step = "forward" if r["mode"] == "fwd" else "fwd+bwd"
        lines.append(
            f"| {r['batch']} | {step} | {r['impl']} | {r['wall_median_s']:.3f} ({r['wall_min_s']:.3f}) | "
            f"{r['cpu_median_s']:.3f} | {r['peak_tensor_MiB']:.1f} | {r['peak_rss_increase_MiB']:.0f} |"
        )
    lines += ["", "Fast-path speed-up (reference / fast) and memory ratio (fast / reference):", ""]
    lines += ["| batch | step | wall speed-up | CPU speed-up | peak tensor fast/ref |", "|---|---|---|---|---|"]
    for s in report["model_summary"]:
        lines.append(
            f"| {s['batch']} | {s['step']} | {s['wall_speedup']:.2f}x | {s['cpu_speedup']:.2f}x | "
            f"{s['peak_tensor_ratio']:.2f} |"
        )
    lines += [
        "",
        f"## One attention layer (C=320, 10 heads, top-k 4, map = input/8), fwd+bwd, batch {report['scaling_batch']}",
        "",
        "| input | map | variant | wall s | CPU s | peak tensor MiB | peak RSS +MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["scaling"]:
        side = r["size"] // 8
        lines.append(
            f"| {r['size']} | {side}x{side} | {r['variant']} | {r['wall_median_s']:.3f} ({r['wall_min_s']:.3f}) | "
            f"{r['cpu_median_s']:.3f} | {r['peak_tensor_MiB']:.1f} | {r['peak_rss_increase_MiB']:.0f} |"
        )
    lines += [
        "",
        "Growth relative to 224 (tokens x4 at 448, x16 at 896):",
        "",
        "| variant | CPU time x (448) | CPU time x (896) | peak tensor x (448) | peak tensor x (896) |",
        "|---|---|---|---|---|",
    ]
    for v, g in report["scaling_growth"].items():
        cells = [g.get(k) for k in ("cpu_x_448", "cpu_x_896", "peak_tensor_x_448", "peak_tensor_x_896")]
        lines.append(f"| {v} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")
    lines += ["", *(f"- {note}" for note in report["notes"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write ``benchmarks/results/mdsa_unet.json`` and ``.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1, see module docstring)")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per configuration after one warm-up")
    parser.add_argument("--scaling-batch", type=int, default=1, help="batch of the scaling study (default 1)")
    parser.add_argument("--quick", action="store_true", help="2 reps, batch 2 instead of 8: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "mdsa_unet.json")
    parser.add_argument("--render", action="store_true", help="only re-render the .md table from the --out JSON")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    if args.render:
        _atomic_write(args.out.with_suffix(".md"), _markdown(json.loads(args.out.read_text())))
        return

    import torch

    reps = 2 if args.quick else args.reps
    batches = (1, 2) if args.quick else (1, 8)
    load_before = os.getloadavg()
    print("part 1: released model at 224x224", flush=True)
    model_runs = []
    for batch in batches:
        for mode in ("fwd", "fwdbwd"):
            for impl in ("fast", "reference"):
                cfg = dict(kind="model", impl=impl, mode=mode, batch=batch, size=224, threads=args.threads, reps=reps)
                model_runs.append(_run(cfg))
    summary = []
    for batch in batches:
        for mode in ("fwd", "fwdbwd"):
            f, r = (
                next(x for x in model_runs if (x["batch"], x["mode"], x["impl"]) == (batch, mode, i))
                for i in ("fast", "reference")
            )
            summary.append(
                {
                    "batch": batch,
                    "step": "forward" if mode == "fwd" else "fwd+bwd",
                    "wall_speedup": r["wall_median_s"] / f["wall_median_s"],
                    "cpu_speedup": r["cpu_median_s"] / f["cpu_median_s"],
                    "peak_tensor_ratio": f["peak_tensor_MiB"] / r["peak_tensor_MiB"],
                }
            )
    print("part 2: one attention layer, 224 / 448 / 896", flush=True)
    scaling = []
    for size in (224, 448, 896):
        for variant in ("dense_naive", "dense", "mdsa_nwin7", "mdsa_auto"):
            if variant == "dense_naive" and size == 896:
                continue  # 10 heads x 12,544^2 fp32 attention = 6.3 GB per matrix: skipped
            impl = "reference" if variant == "dense_naive" else "fast"
            cfg = dict(
                kind="layer",
                impl=impl,
                variant=variant,
                mode="fwdbwd",
                batch=args.scaling_batch,
                size=size,
                threads=args.threads,
                reps=max(2, reps - 2) if size == 896 else reps,
            )
            scaling.append(_run(cfg))
    growth = {}
    for variant in ("dense_naive", "dense", "mdsa_nwin7", "mdsa_auto"):
        runs = {x["size"]: x for x in scaling if x["variant"] == variant}
        growth[variant] = {
            f"{key}_x_{size}": runs[size][field] / runs[224][field]
            for size in (448, 896)
            if size in runs
            for key, field in (("cpu", "cpu_median_s"), ("peak_tensor", "peak_tensor_MiB"))
        }
    report = {
        "benchmark": "bench_mdsa_unet",
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "reps": reps,
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "model": model_runs,
        "model_summary": summary,
        "scaling_batch": args.scaling_batch,
        "scaling": scaling,
        "scaling_growth": growth,
        "notes": [
            "Targets (issue 5): fast path >= 1.3x faster forward+backward than the reference path, lower peak memory.",
            "dense = the same attention module with a single region (global attention over all tokens) through SDPA "
            "(flash-style CPU kernel: memory linear in tokens, time quadratic); dense_naive = the same with "
            "softmax(QK^T)V materialised (skipped at 896: one 10 x 12,544^2 fp32 attention matrix is 6.3 GB); "
            "mdsa_nwin7 = released fixed 7x7 grid (regions grow with the input); mdsa_auto = n_win='auto' "
            "(4x4-token regions at this stride, the grid grows with the input).",
            f"Scaling study at batch {args.scaling_batch}: batch 8 at 896 (dense: 12,544 tokens per image) is too "
            "slow on this shared 2-core CPU.",
            "Reading the scaling table: CPU SDPA does not keep the N x N attention matrix, so dense-SDPA memory grows "
            "linearly while its time grows quadratically; MDSA keeps top-k gathered copies of the routed regions "
            "(K and V share them), so its memory also grows linearly with a larger constant, while its time grows "
            "near-linearly with the auto grid and between linear and quadratic with the fixed 7x7 grid (regions, "
            "and so keys per query, grow with the input). Materialised dense attention grows quadratically in both.",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(args.out, json.dumps(report, indent=1))
    _atomic_write(args.out.with_suffix(".md"), _markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
