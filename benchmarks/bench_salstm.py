"""SALSTM / LSTMSA head: the official code against ours (issue 15 goal 1), and our own paths against each other.

Setting (issue 15): the head alone (the MT-UNet encoder excluded), 3 slices of 64-channel feature maps, batch 1,
float32, CPU; 96x96 by default, 224x224 (the released map size) with ``--sizes 96 224``.

- **official**: ``TransLSTMLayer`` / ``GatedTransLSTMLayer`` from the released ``model.py`` (github.com/yeshunlong/
  SALSTM at e45f8fa, imported at run time from ``--official DIR``), built with the released arguments
  (``hidden_channels=[64]``, ``kernel_size=5``, ``attenion_size=88*88``) from a seeded default init.
- **attnseg**: ``BiTransLSTMHead`` built by ``attnseg.from_official`` from the official state dict, default options
  (``conv_impl="auto"``: the spectral tile kernel in training steps of this size, docs/models/salstm.md §8.2; the
  direct convolutions in inference).
- **attnseg_direct**: the same head with ``conv_impl="direct"`` (the step-0 shortcut with ``F.conv2d``: the state
  before the spectral kernel).
- **reference**: the same head with ``step0_shortcut=False`` (the official order of operations, our reference path).

Before timing, outputs, input gradients and parameter gradients of ours are checked against the official code (train
step, loss = mean logit) in float64 and float32, and the eval forward in float32; differences are max abs difference
over the largest official magnitude (gradients: over the largest gradient of their kind).

Timing: forward (eval, no_grad) and forward+backward (train mode, the three slices require grad as features from a
backbone do, loss = mean logit). The variants run round-robin (``attnseg.bench.speed.time_interleaved``) for
``--rounds`` rounds of ``--runs`` calls; each round gives ratios of median wall (and process-CPU) times; we report
the median ratio over rounds and its spread (min..max). ``torch.profiler`` tables (top rows by self CPU time, one
forward+backward each) and the peak of live allocations of one forward+backward (allocator events) complete the
record. The machine is shared: the load average is recorded before and after.

Usage::

    python benchmarks/bench_salstm.py                                  # 96x96, 2 threads -> results/salstm.{json,md}
    python benchmarks/bench_salstm.py --sizes 96 224                   # also the released 224x224 map size
    python benchmarks/bench_salstm.py --threads 1 --stem salstm_threads1
    python benchmarks/bench_salstm.py --official /path/to/SALSTM/code/ACDC/Baseline
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
OFFICIAL_DEFAULT = Path("/work/.official/SALSTM/code/ACDC/Baseline")
OFFICIAL_COMMIT = "e45f8fa98209fe32872df0d5de9a7b52a25e9a7b"
GOAL = 1.6  # issue 15 goal 1: ours >= 1.6x the official head, forward+backward
EQUAL_RTOL_FP32 = 1e-5
EQUAL_RTOL_FP64 = 1e-9
VARIANTS = {"salstm": ("TransLSTMLayer", "model.SALSTM"), "lstmsa": ("GatedTransLSTMLayer", "model.LSTMSA")}
LARGE = 128  # sides above this use --large-rounds / --large-runs


def _import_official(folder: Path) -> Any:
    """The released ``model.py`` as a module (it needs only torch and numpy)."""
    path = folder / "model.py"
    if not path.is_file():
        print(f"official SALSTM code not found: {path} (pass --official DIR)", file=sys.stderr)
        raise SystemExit(2)
    loader_spec = importlib.util.spec_from_file_location("salstm_official_model", path)
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    return module


def build_pair(module: Any, variant: str, channels: int, seed: int = 0) -> tuple[Any, Any]:
    """The official head (released arguments, seeded default init) and ours with the same weights."""
    from attnseg.models import from_official

    layer_class, official_name = VARIANTS[variant]
    torch.manual_seed(seed)
    official = getattr(module, layer_class)(channels, [channels], 5, True, 4, 88 * 88)
    state = {f"lstmlayer.{k}": v.clone() for k, v in official.state_dict().items()}
    ours = from_official(
        official_name, state, input_channels=channels, hidden_channels=[channels], num_classes=4, attenion_size=88 * 88
    )
    return official, ours


def _official_to_ours(name: str) -> str:
    from attnseg.models.salstm import _official_head_rename

    ours = _official_head_rename(name)
    if ours is None:
        raise KeyError(name)
    return ours


def _train_step(model: Any, slices: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, Any]]:
    model.train().zero_grad(set_to_none=True)
    inputs = [s.detach().clone().requires_grad_(True) for s in slices]
    y = model(*inputs)
    y.mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return y.detach(), [x.grad for x in inputs], grads


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _compare_train(official: Any, ours: Any, slices: list[torch.Tensor]) -> dict[str, Any]:
    y_o, gx_o, gp_o = _train_step(official, slices)
    y_a, gx_a, gp_a = _train_step(ours, slices)
    x_scale = max(float(g.abs().max()) for g in gx_o)
    p_scale = max(float(g.abs().max()) for g in gp_o.values())
    return {
        "output_max_rel_diff": _max_rel(y_a, y_o),
        "input_grad_max_rel_diff": max(float((a - o).abs().max()) for a, o in zip(gx_a, gx_o)) / x_scale,
        "param_grad_max_rel_diff": max(float((gp_a[_official_to_ours(n)] - g).abs().max()) for n, g in gp_o.items())
        / p_scale,
        "spectral_kernel": ours.uses_spectral_kernel(torch.stack(slices, dim=1)),
    }


def equality_check(official: Any, ours: Any, slices: list[torch.Tensor]) -> dict[str, Any]:
    """Ours vs official: float64 and float32 train steps, float32 eval forward."""
    with torch.no_grad():
        eval_diff = _max_rel(ours.eval()(*slices), official.eval()(*slices))
    fp32 = _compare_train(official, ours, slices)
    fp64 = _compare_train(copy.deepcopy(official).double(), copy.deepcopy(ours).double(), [s.double() for s in slices])
    worst = lambda d: max(v for k, v in d.items() if k.endswith("diff"))  # noqa: E731
    return {
        "train_float64": fp64,
        "train_float32": fp32,
        "forward_eval_float32_output_max_rel_diff": eval_diff,
        "tolerance_float64": EQUAL_RTOL_FP64,
        "tolerance_float32": EQUAL_RTOL_FP32,
        "passed": worst(fp64) <= EQUAL_RTOL_FP64 and worst(fp32) <= EQUAL_RTOL_FP32 and eval_diff <= EQUAL_RTOL_FP32,
    }


def _steps(official: Any, ours: Any, slices: list[torch.Tensor], mode: str) -> dict[str, Any]:
    """One call per variant: forward (eval, no_grad) or forward+backward (train, inputs require grad)."""

    def run(model: Any, **options: Any) -> Any:
        def step() -> None:
            for name, value in options.items():
                setattr(model, name, value)
            if mode == "forward":
                model.eval()
                with torch.no_grad():
                    model(*slices)
                return
            model.train().zero_grad(set_to_none=True)
            model(*[s.detach().requires_grad_(True) for s in slices]).mean().backward()

        return step

    return {
        "official": run(official),
        "attnseg": run(ours, step0_shortcut=True, conv_impl="auto"),
        "attnseg_direct": run(ours, step0_shortcut=True, conv_impl="direct"),
        "reference": run(ours, step0_shortcut=False, conv_impl="auto"),
    }


def _reset(ours: Any) -> None:
    ours.step0_shortcut, ours.conv_impl = True, "auto"


def timing(official: Any, ours: Any, slices: list[torch.Tensor], rounds: int, runs: int) -> dict[str, Any]:
    from attnseg.bench.speed import time_interleaved

    out: dict[str, Any] = {}
    for mode in ("forward", "forward_backward"):
        steps = _steps(official, ours, slices, mode)
        per_round = []
        for r in range(rounds):
            res = time_interleaved(steps, runs=runs, warmup=1 if r == 0 else 0, digits=2)
            _reset(ours)
            wall = {n: res[n]["wall"]["median_ms"] for n in steps}
            cpu = {n: res[n]["process_cpu"]["median_ms"] for n in steps}
            per_round.append({"wall_median_ms": wall, "cpu_median_ms": cpu, "load": round(os.getloadavg()[0], 2)})
            print(
                f"    {mode:16s} round {r + 1}/{rounds}: "
                + ", ".join(f"{n} {wall[n]:.0f} ms" for n in steps)
                + f"; official/attnseg {wall['official'] / wall['attnseg']:.2f}x (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
        summary: dict[str, Any] = {"rounds": per_round}
        for n in steps:
            summary[f"{n}_wall_median_ms"] = statistics.median(p["wall_median_ms"][n] for p in per_round)
        for num, den in (("official", "attnseg"), ("official", "attnseg_direct"), ("reference", "attnseg")):
            for kind in ("wall", "cpu"):
                ratios = [p[f"{kind}_median_ms"][num] / p[f"{kind}_median_ms"][den] for p in per_round]
                summary[f"ratio_{kind}_{num}_over_{den}"] = {
                    "median": round(statistics.median(ratios), 3),
                    "min": round(min(ratios), 3),
                    "max": round(max(ratios), 3),
                }
        out[mode] = summary
    return out


def _profile_table(step: Any, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    step()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=36)


def _peak_live_bytes(step: Any) -> int:
    """Peak of live CPU allocations during ``step`` (allocator events recorded by the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    events = sorted((e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)), key=lambda e: e.time_range.start)
    for e in events:
        live += e.cpu_memory_usage
        peak = max(peak, live)
    return peak


def bench_case(module: Any, variant: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    official, ours = build_pair(module, variant, args.channels)
    gen = torch.Generator().manual_seed(1)
    slices = [torch.randn(1, args.channels, size, size, generator=gen) for _ in range(3)]
    print(f"  {variant} @{size}: equality check", flush=True)
    check = equality_check(official, ours, slices)
    _reset(ours)
    print(f"    {check}", flush=True)
    if not check["passed"]:
        raise RuntimeError(f"{variant} @{size}: ours and the official head differ beyond tolerance: {check}")
    large = size > LARGE
    rounds, runs = (args.large_rounds, args.large_runs) if large else (args.rounds, args.runs)
    result = {"size": size, "equality_check": check, "timing": timing(official, ours, slices, rounds, runs)}
    result["rounds"], result["runs_per_round"] = rounds, runs
    steps = _steps(official, ours, slices, "forward_backward")
    if not args.no_profile:
        result["profile_forward_backward"] = {
            n: _profile_table(steps[n], args.profile_rows) for n in ("official", "attnseg")
        }
        result["peak_live_MiB_forward_backward"] = {
            n: round(_peak_live_bytes(steps[n]) / 2**20, 1) for n in ("official", "attnseg", "attnseg_direct")
        }
    _reset(ours)
    return result


def markdown(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    lines = [
        "# SALSTM / LSTMSA head: attnseg against the official code",
        "",
        f"Generated {doc['created']} by `python benchmarks/bench_salstm.py {' '.join(doc['argv'])}`. Official code "
        f"{doc['official']['repo']} at {doc['official']['commit'][:7]} (`{doc['official']['file']}`, imported at run "
        f"time) against attnseg's `BiTransLSTMHead` loaded from its weights. Head alone: 3 slices x "
        f"{cfg['channels']} channels, batch 1, float32, CPU, {cfg['threads']} intra-op thread(s); "
        f"{doc['environment']['host']['cpu']}, {doc['environment']['host']['logical_cpus']} logical CPUs shared with "
        f"other jobs; load average {doc['load_before'][0]:.2f} before, {doc['load_after'][0]:.2f} after.",
        "",
        'Variants: **attnseg** = default options (`conv_impl="auto"`: spectral tile kernel in training steps, direct '
        'convs in inference; docs/models/salstm.md §8.2); **attnseg_direct** = `conv_impl="direct"` (the step-0 '
        "shortcut with `F.conv2d`, the state before the kernel); **reference** = `step0_shortcut=False` (official "
        "order of operations).",
        "",
        "## Equality before timing",
        "",
        "Ours vs official: max abs difference / largest official magnitude (gradients: / largest gradient of their "
        "kind); train step with loss = mean logit.",
        "",
        "| variant | size | check | output | input grads | param grads | spectral kernel |",
        "|---|---:|---|---|---|---|---|",
    ]
    for case in doc["cases"]:
        chk = case["equality_check"]
        for key, label in (("train_float64", "train, float64"), ("train_float32", "train, float32")):
            c = chk[key]
            lines.append(
                f"| {case['variant']} | {case['size']} | {label} | {c['output_max_rel_diff']:.1e} | "
                f"{c['input_grad_max_rel_diff']:.1e} | {c['param_grad_max_rel_diff']:.1e} | "
                f"{'yes' if c['spectral_kernel'] else 'no'} |"
            )
        lines.append(
            f"| {case['variant']} | {case['size']} | eval forward, float32 | "
            f"{chk['forward_eval_float32_output_max_rel_diff']:.1e} | - | - | no |"
        )
    lines += [
        "",
        f"Tolerances: float64 {EQUAL_RTOL_FP64:g}, float32 {EQUAL_RTOL_FP32:g} (issue 15: equal within 1e-5 relative).",
        "",
        "## Speed",
        "",
        "Per round, ratio = median wall time of the numerator / of the denominator over the round's interleaved "
        "calls; the table gives the median over rounds (min..max). CPU = the same with process CPU time.",
        "",
        "| variant | size | step | official ms | attnseg ms | official / attnseg | CPU | official / attnseg_direct "
        "| reference / attnseg |",
        "|---|---:|---|---:|---:|---|---|---|---|",
    ]
    for case in doc["cases"]:
        for mode, label in (("forward", "forward (eval)"), ("forward_backward", "forward+backward")):
            t = case["timing"][mode]

            def ratio(key: str, t: dict[str, Any] = t) -> str:
                r = t[key]
                return f"{r['median']:.2f}x ({r['min']:.2f}..{r['max']:.2f})"

            lines.append(
                f"| {case['variant']} | {case['size']} | {label} | {t['official_wall_median_ms']:.0f} | "
                f"{t['attnseg_wall_median_ms']:.0f} | **{ratio('ratio_wall_official_over_attnseg')}** | "
                f"{ratio('ratio_cpu_official_over_attnseg')} | {ratio('ratio_wall_official_over_attnseg_direct')} | "
                f"{ratio('ratio_wall_reference_over_attnseg')} |"
            )
    lines.append("")
    for case in doc["cases"]:
        fb = case["timing"]["forward_backward"]["ratio_wall_official_over_attnseg"]["median"]
        verdict = "meets" if fb >= GOAL else "**does not meet**"
        lines.append(
            f"- {case['variant']} @{case['size']}: forward+backward {fb:.2f}x the official head, {verdict} the "
            f"{GOAL}x goal ({case['rounds']} rounds x {case['runs_per_round']} calls)."
        )
    mem = [c for c in doc["cases"] if "peak_live_MiB_forward_backward" in c]
    if mem:
        lines += [
            "",
            "Peak of live allocations during one forward+backward (MiB; allocator events, parameters and inputs "
            "excluded):",
            "",
            "| variant | size | official | attnseg | attnseg_direct |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in mem:
            p = c["peak_live_MiB_forward_backward"]
            lines.append(
                f"| {c['variant']} | {c['size']} | {p['official']:.0f} | {p['attnseg']:.0f} | "
                f"{p['attnseg_direct']:.0f} |"
            )
    prof = [c for c in doc["cases"] if "profile_forward_backward" in c]
    if prof:
        lines += ["", "## Profiles (one forward+backward, top ops by self CPU time)", ""]
        for c in prof:
            for who in ("official", "attnseg"):
                lines += [
                    f"{c['variant']} @{c['size']}, {who}:",
                    "",
                    "```",
                    c["profile_forward_backward"][who],
                    "```",
                    "",
                ]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=OFFICIAL_DEFAULT, help="folder holding the released model.py")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, help="interleaved calls per variant and round")
    parser.add_argument("--large-rounds", type=int, default=2, help=f"rounds for sides > {LARGE}")
    parser.add_argument("--large-runs", type=int, default=2, help=f"calls per round for sides > {LARGE}")
    parser.add_argument("--profile-rows", type=int, default=10)
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler tables and peak memory")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="salstm")
    args = parser.parse_args()

    from attnseg.bench.report import environment_info, save_results

    torch.set_num_threads(args.threads)
    module = _import_official(args.official)
    load_before = os.getloadavg()
    cases = []
    for size in args.sizes:
        for variant in args.variants:
            cases.append({"variant": variant, **bench_case(module, variant, size, args)})
    doc = {
        "benchmark": "bench_salstm",
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv[1:],
        "official": {
            "repo": "github.com/yeshunlong/SALSTM",
            "commit": OFFICIAL_COMMIT,
            "file": "code/ACDC/Baseline/model.py",
            "dir": str(args.official),
        },
        "config": {
            "channels": args.channels,
            "slices": 3,
            "batch": 1,
            "dtype": "float32",
            "threads": args.threads,
            "sizes": args.sizes,
            "loss": "mean of the logits",
            "goal": f"attnseg >= {GOAL}x the official head, forward+backward, outputs equal within 1e-5 relative",
        },
        "cases": cases,
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "environment": environment_info(),
    }
    save_results(args.results, args.stem, doc, markdown(doc))


if __name__ == "__main__":
    main()
