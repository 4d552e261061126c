"""MSA²Net module by module, ours vs the official modules: MASAG and the decoder stages, fp32 CPU.

The official package cannot be imported whole on Python 3.11 (its MaxViT copy in ``networks/merit_lib`` declares a
mutable dataclass default), so the two module files are loaded individually from ``--official DIR`` (a checkout of
github.com/xmindflow/MSA-2Net at commit 209ca72263c903048ae03077dfc023dd14d09c6c): ``networks/masag.py``
(``MultiScaleGatedAttn``) and ``networks/msa2net.py`` (``MyDecoderLayerLKA``, ``MyDecoderLayerDAEFormer``), with
stub modules standing in for the unused backbone import, in this process only. The paper's DAE-Former decoder layer
is the first of the two ``__init__``/``forward`` pairs of ``MyDecoderLayerDAEFormer`` (Python keeps the second); it
is rebuilt at run time by compiling that class with the shadowing second pair removed from its syntax tree.

Cases: the six official fixtures of ``tests/fixtures/official/msa2net`` (their constructor arguments, weights and
inputs), and the sizes of the 224x224 model at batch 2 (paper decoder: DAE stage at 1/16 with 384 channels, LKA
stages at 1/8 and 1/4 with 192 and 96, MASAG at each of these, the skip-less 1/32 stage with 768), with the official
initialisation perturbed by a seeded generator and the skip passed as a permuted view of an NCHW map, as the full
model does. Ours is built by ``attnseg.models.from_official`` from the official state dict (``legacy_layout=True``,
the official token reinterpretation, so the outputs must agree).

Method: before timing, outputs (eval, no grad) and, in train mode, outputs, input gradients and every parameter
gradient (official names mapped to ours) are compared: the table gives the max relative difference (max abs
difference over max abs reference value). Timing: ``--rounds`` rounds of ``attnseg.bench.speed.time_interleaved``
(``--runs`` calls each after ``--warmup``, the two implementations alternating call by call); per round the ratio of
medians official / ours, from wall-clock and from process-CPU time (the steadier figure on a loaded machine);
reported: median of those ratios and their min..max. Gradients that are zero up to rounding (a conv bias before a
train-mode BatchNorm) are compared against 1e-3 of the largest gradient. "fwd" is eval under ``no_grad``;
"fwd+bwd" is train mode (BatchNorm batch statistics), backward of the mean of the output times fixed random weights
(a plain mean after MASAG's final BatchNorm would have zero gradient), gradients reset to None.
One intra-op thread by default; load average before and after.

Bound (realistic cases, with ``--profile``): the share of our training step spent in convolutions, matmuls and
normalisations that the official step also runs on the same input shapes (``shared_kernel_share``), and the ratio
divided by it, the most any rewrite of the remaining ops could give (Amdahl's law).

Usage: ``python benchmarks/bench_msa2net_modules.py [--official DIR] [--threads 1] [--rounds 5] [--runs 10]
[--cases fixture|realistic|all] [--profile N]``
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import statistics
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from attnseg.bench.report import environment_info, save_results
from attnseg.bench.speed import time_interleaved
from attnseg.models import from_official
from attnseg.models.msa2net import _MASAG_RENAME, _rename_by_table, _rename_stage_key

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIXTURES = ROOT / "tests" / "fixtures" / "official" / "msa2net"
DEFAULT_OFFICIAL = Path("/work/.official/MSA-2Net")
STEM = "msa2net_modules"
FIXTURE_CASES = (
    "masag_c32_28",
    "decoder_lka_c32_14",
    "decoder_lka_last_c32_14",
    "decoder_dae_paper_c32_14",
    "decoder_dae_shipped_c32_14",
    "decoder_noskip_paper_c32_7",
)
MASAG = "networks.masag.MultiScaleGatedAttn"
LKA = "networks.msa2net.MyDecoderLayerLKA"
DAE_SHIPPED = "networks.msa2net.MyDecoderLayerDAEFormer"
DAE_PAPER = "networks.msa2net_daeformer_variant.MyDecoderLayerDAEFormer"


# ---------------------------------------------------------------------------------------------------- official code


def _paper_dae_class(module: types.ModuleType, source: str) -> type:
    """``MyDecoderLayerDAEFormer`` as the paper ran it: its first ``__init__``/``forward`` (the file redefines both)."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "MyDecoderLayerDAEFormer":
            seen: set[str] = set()
            body = []
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    if item.name in seen:
                        continue
                    seen.add(item.name)
                body.append(item)
            node.body = body
            namespace = dict(vars(module))
            exec(compile(ast.Module(body=[node], type_ignores=[]), module.__file__, "exec"), namespace)  # noqa: S102
            return namespace["MyDecoderLayerDAEFormer"]
    raise RuntimeError("MyDecoderLayerDAEFormer not found in the official networks/msa2net.py")


def load_official(folder: Path) -> dict[str, type]:
    """The official module classes, keyed by the fixture ``official_class`` names."""
    networks = folder / "networks"
    if not (networks / "masag.py").is_file() or not (networks / "msa2net.py").is_file():
        raise FileNotFoundError(f"no official MSA-2Net checkout at {folder} (expected networks/masag.py, msa2net.py)")
    package = types.ModuleType("networks")
    package.__path__ = [str(networks)]
    sys.modules["networks"] = package
    # the backbone import (merit_lib's MaxViT) breaks on Python 3.11 and is not needed for the decoder layers
    stub = types.ModuleType("networks.merit_lib")
    stub.__path__ = []
    stub_nets = types.ModuleType("networks.merit_lib.networks")
    stub_nets.MaxViT4Out_Small = None
    sys.modules["networks.merit_lib"] = stub
    sys.modules["networks.merit_lib.networks"] = stub_nets
    import importlib

    masag = importlib.import_module("networks.masag")
    msa2net = importlib.import_module("networks.msa2net")
    paper = _paper_dae_class(msa2net, (networks / "msa2net.py").read_text())
    return {
        MASAG: masag.MultiScaleGatedAttn,
        LKA: msa2net.MyDecoderLayerLKA,
        DAE_SHIPPED: msa2net.MyDecoderLayerDAEFormer,
        DAE_PAPER: paper,
    }


# ---------------------------------------------------------------------------------------------------- cases


def _decoder_kwargs(h: int, dim: int, is_last: bool = False) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "input_size": [h, h],
        "in_out_chan": [dim] * 5,
        "head_count": 1,
        "token_mlp_mode": "mix_skip",
        "reduction_ratio": 2,
    }
    if is_last:
        kw.update(n_class=9, is_last=True)
    return kw


def _decoder_inputs(b: int, h: int, dim: int, skip: bool = True) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(h * 1000 + dim)
    tokens = torch.randn(b, h * h, dim, generator=g)
    if not skip:
        return [tokens]
    return [tokens, torch.randn(b, dim, h, h, generator=g).permute(0, 2, 3, 1)]  # as the full model passes it


def realistic_cases(batch: int = 2) -> list[dict[str, Any]]:
    """The modules of the 224x224 paper model (and the shipped 1/16 stage) at ``batch``."""
    cases = []
    for dim, h in ((96, 56), (192, 28), (384, 14)):
        g = torch.Generator().manual_seed(dim)
        inputs = [torch.randn(batch, dim, h, h, generator=g) for _ in range(2)]
        cases.append({"name": f"masag_c{dim}_{h}", "cls": MASAG, "kwargs": {"dim": dim}, "inputs": inputs})
    cases += [
        {"name": "decoder_dae_paper_c384_14", "cls": DAE_PAPER, "kwargs": _decoder_kwargs(14, 384)},
        {"name": "decoder_dae_shipped_c384_14", "cls": DAE_SHIPPED, "kwargs": _decoder_kwargs(14, 384)},
        {"name": "decoder_lka_c192_28", "cls": LKA, "kwargs": _decoder_kwargs(28, 192)},
        {"name": "decoder_lka_last_c96_56", "cls": LKA, "kwargs": _decoder_kwargs(56, 96, is_last=True)},
        {"name": "decoder_noskip_paper_c768_7", "cls": DAE_PAPER, "kwargs": _decoder_kwargs(7, 768), "skip": False},
    ]
    for c in cases:
        if "inputs" not in c:
            h, dim = c["kwargs"]["input_size"][0], c["kwargs"]["in_out_chan"][0]
            c["inputs"] = _decoder_inputs(batch, h, dim, c.get("skip", True))
        c["size"] = f"b{batch} " + "x".join(map(str, c["inputs"][0].shape[1:]))
    return cases


def fixture_cases() -> list[dict[str, Any]]:
    cases = []
    for name in FIXTURE_CASES:
        folder = FIXTURES / name
        meta = json.loads((folder / "meta.json").read_text())
        inputs = [torch.from_numpy(np.load(folder / spec["file"])) for spec in meta["inputs"]]
        cases.append(
            {
                "name": name,
                "cls": meta["official_class"],
                "kwargs": meta["constructor_kwargs"],
                "inputs": inputs,
                "state_dict": load_file(str(folder / "weights.safetensors")),
                "size": "fixture " + "x".join(map(str, inputs[0].shape)),
            }
        )
    return cases


def _perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Official init made non-trivial: BN statistics, norm affine terms, biases and layer scales perturbed."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, t in state.items():
        if not t.is_floating_point():
            out[k] = t.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(t.shape, generator=g) + 0.5
        elif k.endswith("running_mean") or k.endswith("bias"):
            out[k] = t + 0.1 * torch.randn(t.shape, generator=g)
        elif "layer_scale" in k:
            out[k] = torch.rand(t.shape, generator=g) * 0.4 + 0.3
        elif t.ndim == 1 or "temperature" in k:
            out[k] = t + 0.1 * torch.randn(t.shape, generator=g)
        else:
            out[k] = t.clone()
    return out


def build_pair(case: dict[str, Any], official: dict[str, type]) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    theirs = official[case["cls"]](**case["kwargs"])
    sd = case.get("state_dict") or _perturbed(theirs.state_dict(), seed=1)
    theirs.load_state_dict(sd)
    ours = from_official(case["cls"], sd, **case["kwargs"])
    return theirs, ours


def our_key(case: dict[str, Any], official_key: str) -> str:
    """Official parameter name -> ours (the mapping of attnseg.models.msa2net's official-weight loaders)."""
    if case["cls"] == MASAG:
        return _rename_by_table(official_key, _MASAG_RENAME)
    if official_key.startswith("last_layer."):
        return "head." + official_key[len("last_layer.") :]
    return "stage." + _rename_stage_key(official_key)


# ---------------------------------------------------------------------------------------------------- measuring


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


_LOSS_WEIGHTS: dict[tuple[int, ...], torch.Tensor] = {}


def _loss(out: torch.Tensor) -> torch.Tensor:
    """Mean of the output times fixed random weights (a plain mean after MASAG's final BatchNorm has zero gradient)."""
    shape = tuple(out.shape)
    if shape not in _LOSS_WEIGHTS:
        _LOSS_WEIGHTS[shape] = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    return (out * _LOSS_WEIGHTS[shape]).mean()


def _train_pass(model: torch.nn.Module, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    model.train().zero_grad(set_to_none=True)
    out = model(*xs)
    _loss(out).backward()
    return out.detach(), [x.grad for x in xs]


def check(case: dict[str, Any], theirs: torch.nn.Module, ours: torch.nn.Module) -> dict[str, float]:
    """Max relative differences: eval output; train output, input gradients, parameter gradients."""
    with torch.no_grad():
        ref, out = theirs.eval()(*case["inputs"]), ours.eval()(*case["inputs"])
    diffs = {"forward": _rel(out, ref)}
    # train mode updates BN running statistics: run it on copies so the timed modules keep equal states
    state_t, state_o = {k: v.clone() for k, v in theirs.state_dict().items()}, ours.state_dict()
    state_o = {k: v.clone() for k, v in state_o.items()}
    ref, ref_gx = _train_pass(theirs, case["inputs"])
    out, out_gx = _train_pass(ours, case["inputs"])
    diffs["train_output"] = _rel(out, ref)
    diffs["input_grad"] = max(_rel(a, b) for a, b in zip(out_gx, ref_gx))
    mine = dict(ours.named_parameters())
    grads = {name: p.grad for name, p in theirs.named_parameters() if p.grad is not None}  # None: never executed
    # some gradients are zero up to rounding (a conv bias before a train-mode BatchNorm, the keys' bias under a
    # softmax over positions): their scale floor is 1e-3 of the largest gradient
    floor = 1e-3 * max(float(g.abs().max()) for g in grads.values())
    diffs["param_grad"] = max(
        float((mine[our_key(case, name)].grad - g).abs().max()) / max(float(g.abs().max()), floor)
        for name, g in grads.items()
    )
    theirs.load_state_dict(state_t)
    ours.load_state_dict(state_o)
    theirs.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    return diffs


def _steps(models: dict[str, torch.nn.Module], inputs: list[torch.Tensor], mode: str) -> dict[str, Callable]:
    steps = {}
    for name, m in models.items():
        if mode == "forward":
            m.eval()

            def step(m=m) -> None:
                with torch.no_grad():
                    m(*inputs)

        else:
            m.train()
            xs = [x.detach().clone().requires_grad_(True) for x in inputs]

            def step(m=m, xs=xs) -> None:
                m.zero_grad(set_to_none=True)
                for x in xs:
                    x.grad = None
                _loss(m(*xs)).backward()

        steps[name] = step
    return steps


def time_pair(theirs, ours, inputs, mode: str, rounds: int, runs: int, warmup: int) -> dict[str, Any]:
    steps = _steps({"official": theirs, "ours": ours}, inputs, mode)
    ratios, cpu_ratios, per_round = [], [], []
    for r in range(rounds):
        res = time_interleaved(steps, runs, warmup if r == 0 else 1, digits=3)
        t_off, t_ours = res["official"]["wall"]["median_ms"], res["ours"]["wall"]["median_ms"]
        c_off, c_ours = res["official"]["process_cpu"]["median_ms"], res["ours"]["process_cpu"]["median_ms"]
        ratios.append(t_off / t_ours)
        cpu_ratios.append(c_off / c_ours)
        per_round.append({"official_ms": t_off, "ours_ms": t_ours, "official_cpu_ms": c_off, "ours_cpu_ms": c_ours})
    return {
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "cpu_ratio_median": round(statistics.median(cpu_ratios), 3),
        "cpu_ratio_min": round(min(cpu_ratios), 3),
        "cpu_ratio_max": round(max(cpu_ratios), 3),
        "official_ms_median": round(statistics.median(p["official_ms"] for p in per_round), 3),
        "ours_ms_median": round(statistics.median(p["ours_ms"] for p in per_round), 3),
        "rounds": per_round,
    }


def profile_pair(theirs, ours, inputs, mode: str, iters: int, top: int = 8) -> dict[str, list[dict[str, Any]]]:
    """Top ops by self CPU time over ``iters`` calls, per implementation."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, m in (("official", theirs), ("ours", ours)):
        step = _steps({name: m}, inputs, mode)[name]
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                step()
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        out[name] = [
            {
                "op": e.key,
                "self_cpu_ms_per_call": round(e.self_cpu_time_total / 1e3 / iters, 3),
                "share": round(e.self_cpu_time_total / max(total, 1), 3),
                "calls_per_step": e.count // iters,
            }
            for e in rows
        ]
        m.zero_grad(set_to_none=True)
    return out


# compute kernels whose cost a rewrite cannot cut when both implementations call them on the same shapes
SHARED_KERNELS = ("conv", "mm", "batch_norm", "layer_norm")


def shared_kernel_share(theirs, ours, inputs, iters: int) -> dict[str, Any]:
    """Share of our training step spent in compute kernels the official step also runs, with the same input shapes.

    Both steps are profiled with their input shapes; an ``aten::`` op of ours whose name holds one of
    :data:`SHARED_KERNELS` counts as shared when the official step calls the same op on the same shapes (per call up
    to the official count). ``share`` = shared self CPU time / all ``aten::`` self CPU time of ours. If every other
    op of ours cost nothing, the ratio official / ours could not pass ``ratio / share`` (Amdahl's law).
    """
    from torch.profiler import ProfilerActivity, profile

    groups = {}
    for name, m in (("official", theirs), ("ours", ours)):
        step = _steps({name: m}, inputs, "forward_backward")[name]
        step()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(iters):
                step()
        groups[name] = {
            (e.key, str(e.input_shapes)): (e.self_cpu_time_total, e.count)
            for e in prof.key_averages(group_by_input_shape=True)
            if e.key.startswith("aten::")
        }
        m.zero_grad(set_to_none=True)
    total = sum(t for t, _ in groups["ours"].values())
    shared = 0.0
    for (key, shapes), (t, n) in groups["ours"].items():
        if any(k in key for k in SHARED_KERNELS) and (key, shapes) in groups["official"]:
            shared += t * min(1.0, groups["official"][key, shapes][1] / n)
    return {"share": round(shared / max(total, 1), 4), "shared_ms_per_step": round(shared / 1e3 / iters, 3)}


# ---------------------------------------------------------------------------------------------------- report


def markdown(doc: dict[str, Any]) -> str:
    host = doc["environment"]["host"]
    lines = [
        "# MSA²Net modules: ours vs official (fp32 CPU)",
        "",
        f"Generated {doc['created']} by `python benchmarks/bench_msa2net_modules.py`; {host['cpu']}, "
        f"{doc['threads']} torch thread(s), load average {doc['load_before']} before, {doc['load_after']} after. "
        f"Ratio = official time / our time (median over {doc['rounds']} interleaved rounds of {doc['runs']} calls, "
        "spread min..max of the per-round ratios), from wall-clock medians and from process-CPU-time medians "
        "(steadier on a loaded machine); > 1 means ours is faster. Max rel diff: outputs (eval), and in train mode "
        "outputs, input and parameter gradients (max |ours - official| / max |official|).",
        "",
        "| module | size | fwd ratio | fwd+bwd ratio | fwd / fwd+bwd CPU-time ratio | official fwd / fwd+bwd ms "
        "| ours fwd / fwd+bwd ms | max rel diff (eval / train out / grads) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["results"]:
        f, b, d = r["forward"], r["forward_backward"], r["max_rel_diff"]
        grads = max(d["input_grad"], d["param_grad"])
        lines.append(
            f"| {r['case']} | {r['size']} | {f['ratio_median']:.2f} ({f['ratio_min']:.2f}..{f['ratio_max']:.2f}) "
            f"| {b['ratio_median']:.2f} ({b['ratio_min']:.2f}..{b['ratio_max']:.2f}) "
            f"| {f['cpu_ratio_median']:.2f} ({f['cpu_ratio_min']:.2f}..{f['cpu_ratio_max']:.2f}) / "
            f"{b['cpu_ratio_median']:.2f} ({b['cpu_ratio_min']:.2f}..{b['cpu_ratio_max']:.2f}) "
            f"| {f['official_ms_median']:.2f} / {b['official_ms_median']:.2f} "
            f"| {f['ours_ms_median']:.2f} / {b['ours_ms_median']:.2f} "
            f"| {d['forward']:.1e} / {d['train_output']:.1e} / {grads:.1e} |"
        )
    bounded = [r for r in doc["results"] if "bound" in r]
    if bounded:
        lines += [
            "",
            "## Bound: compute kernels both implementations run on the same shapes (training step)",
            "",
            "Shared = self CPU time of our convolutions, matmuls, BatchNorms and LayerNorms (forward and backward) "
            "that the official step also calls with the same input shapes, as a share of our step "
            "(`shared_kernel_share`). Bound = fwd+bwd ratio / shared: the largest ratio any rewrite of the other "
            "ops could reach while these kernels stay (Amdahl's law, all else at zero cost).",
            "",
            "| module | shared | shared ms / step | fwd+bwd ratio wall (CPU) | bound wall (CPU) | 1.2x reachable |",
            "|---|---:|---:|---|---|---|",
        ]
        for r in bounded:
            b, fb = r["bound"], r["forward_backward"]
            reachable = "yes" if max(b["wall"], b["cpu"]) >= 1.2 else "no"
            lines.append(
                f"| {r['case']} | {100 * b['share']:.1f} % | {b['shared_ms_per_step']:.1f} "
                f"| {fb['ratio_median']:.2f} ({fb['cpu_ratio_median']:.2f}) | {b['wall']:.2f} ({b['cpu']:.2f}) "
                f"| {reachable} |"
            )
    for name, prof in doc.get("profiles", {}).items():
        for mode, impls in prof.items():
            lines += ["", f"## Profile: {name}, {mode} (top ops by self CPU time per call)", ""]
            for impl, rows in impls.items():
                lines += [f"{impl}:", "", "| op | self CPU ms / step | share | calls / step |", "|---|---:|---:|---:|"]
                lines += [
                    f"| `{e['op']}` | {e['self_cpu_ms_per_call']:.3f} | {100 * e['share']:.0f} % | "
                    f"{e['calls_per_step']} |"
                    for e in rows
                ]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, default=DEFAULT_OFFICIAL, help="official MSA-2Net checkout")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10, help="timed calls per implementation and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", choices=("fixture", "realistic", "all"), default="all")
    parser.add_argument("--only", nargs="*", default=None, help="case names to run (default: all of --cases)")
    parser.add_argument("--profile", type=int, default=5, help="profiled calls per realistic case (0: no profile)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-save", action="store_true", help="print the table without writing results")
    args = parser.parse_args(argv)
    if not (args.official / "networks" / "msa2net.py").is_file():
        print(f"official MSA-2Net code not found at {args.official} (pass --official DIR)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    official = load_official(args.official)
    cases = (fixture_cases() if args.cases in ("fixture", "all") else []) + (
        realistic_cases() if args.cases in ("realistic", "all") else []
    )
    if args.only:
        cases = [c for c in cases if c["name"] in args.only]
    load_before = [round(v, 2) for v in os.getloadavg()]
    results, profiles = [], {}
    for case in cases:
        theirs, ours = build_pair(case, official)
        diffs = check(case, theirs, ours)
        row = {
            "case": case["name"],
            "size": case["size"],
            "max_rel_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        }
        for mode in ("forward", "forward_backward"):
            row[mode] = time_pair(theirs, ours, case["inputs"], mode, args.rounds, args.runs, args.warmup)
        if args.profile and "state_dict" not in case:
            profiles[case["name"]] = {
                mode: profile_pair(theirs, ours, case["inputs"], mode, args.profile)
                for mode in ("forward", "forward_backward")
            }
            shared = shared_kernel_share(theirs, ours, case["inputs"], args.profile)
            fb = row["forward_backward"]
            row["bound"] = {
                **shared,
                "wall": round(fb["ratio_median"] / shared["share"], 3),
                "cpu": round(fb["cpu_ratio_median"] / shared["share"], 3),
            }
        print(
            f"{case['name']:32s} fwd {row['forward']['ratio_median']:.2f} "
            f"({row['forward']['ratio_min']:.2f}..{row['forward']['ratio_max']:.2f})  fwd+bwd "
            f"{row['forward_backward']['ratio_median']:.2f} ({row['forward_backward']['ratio_min']:.2f}.."
            f"{row['forward_backward']['ratio_max']:.2f})  diff {max(diffs.values()):.1e}",
            flush=True,
        )
        results.append(row)
    doc = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "benchmark": "MSA2Net modules, ours (legacy_layout=True) vs official, fp32 CPU",
        "official": {"repo": "xmindflow/MSA-2Net", "commit": "209ca72263c903048ae03077dfc023dd14d09c6c"},
        "threads": args.threads,
        "rounds": args.rounds,
        "runs": args.runs,
        "warmup": args.warmup,
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "method": __doc__,
        "results": results,
        "profiles": profiles,
        "environment": environment_info(),
    }
    text = markdown(doc)
    if args.no_save:
        print(text)
    else:
        save_results(args.results, STEM, doc, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
