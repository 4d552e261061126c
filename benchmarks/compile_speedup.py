"""``torch.compile`` (inductor) training-step speed-up per model on CPU, with the inductor-vs-eager equality check.

For every registered model (``--models`` to pick), in a fresh subprocess (its own inductor cache directory, so one
model's compile cache or failure cannot affect the next; ``--timeout`` seconds each):

1. Configuration. ``--config auto`` (default): the registered default configuration (default options) at the
   model's ``default_input_size`` when one eager training step there takes at most ``--max-step-s`` seconds (probed
   once, 2D only: a 3D default volume such as 128^3 is not affordable on a 2-core CPU), otherwise the registered test
   configuration (``test_kwargs`` at ``test_input_size``, as ``tests/models/test_conformance.py`` builds it). The
   record says which and why. ``--config test`` / ``--config default`` force one. One input channel, two classes.
2. Equality (inductor training): two copies of the model with identical initial weights, one eager and one
   ``torch.compile(model)`` (inductor backend, default mode), each with its own AdamW; one training step each
   (train mode, cross-entropy on a fixed random target, backward, AdamW step) on the same input. We report the
   relative difference of the first-step losses, the whole-model relative L2 gradient difference, and the largest
   gradient difference relative to the largest eager gradient (biases before batch-statistics BN have a true
   gradient of zero, so per-tensor ratios would compare round-off with round-off). As the float32 round-off floor,
   the same step in eager float64 gives both float32 gradient errors (eager and compiled, each against float64).
   They agree when the loss is within 1e-4 and the gradients agree by the conformance suite's rule
   (``attnseg.bench.compile_check``: within 1e-3 of the largest gradient, or within 2x the conditioning floor, the
   largest change of the eager float32 gradients when the input is perturbed by a relative 1e-6, 3 draws; a model
   whose gradient is smooth at this input has a floor of ~1e-6, one with ReLU kinks or BN over a handful of values,
   such as the DenseUNet family at 64x64, 1e-3), or when compiled is no further (at most 2x) from float64 than eager
   float32 is. The floor is measured for every model, for the table. Dropout and drop-path are set to zero in both
   copies (inductor draws its own random numbers, so masks would differ); the number of layers so disabled is
   recorded.
3. Compile time: the wall time of the first compiled step (Dynamo capture, AOTAutograd and inductor code generation
   of forward and backward) next to the first eager step. Dynamo's graph and graph-break counters are recorded.
4. Speed: eager and compiled training steps round-robin (``attnseg.bench.speed.time_interleaved``) for ``--rounds``
   rounds after one warm-up step each; each round gives one ratio eager / compiled of the median wall times (runs
   per round chosen so a round lasts about a second, at least 3); we report the median ratio and its spread
   (min..max over rounds), and the load average before and after.

A model whose compile fails is reported with the first line of the error (and the stage) and the run goes on;
its compile is then retried once with ``dynamic=False`` (no automatic dynamic shapes; ``--no-retry-static`` to skip),
which tells a failure of Dynamo's dynamic-shape recompilation apart from one of the static graph.
The inductor cache is cold unless ``--cache-dir`` points at a populated directory: each model gets
``CACHE/<model>`` as ``TORCHINDUCTOR_CACHE_DIR`` (default ``CACHE`` = a new directory under /tmp), and the record
says whether it was empty. Writes ``benchmarks/results/compile_speedup.{json,md}``.

Usage::

    python benchmarks/compile_speedup.py                       # every model (about an hour on 2 busy cores)
    python benchmarks/compile_speedup.py --models unet malunet --config test
    python benchmarks/compile_speedup.py --render                # re-write the .md from the .json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IN_CHANNELS = 1
NUM_CLASSES = 2
LOSS_RTOL = 1e-4
_MARK = "COMPILE_SPEEDUP_RESULT "

__all__ = ["main"]


# ---- worker side (one model, fresh process) ----------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".strip()


def _setup(name: str, config: str, batch: int) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Model (dropout off), input and target of configuration ``config`` (``"test"`` or ``"default"``)."""
    import torch

    from attnseg.bench.compile_check import disable_dropout
    from attnseg.models import create_model, model_info

    info = model_info(name)
    kwargs = dict(info.test_kwargs) if config == "test" else {}
    size = tuple(info.test_input_size if config == "test" else info.default_input_size)
    torch.manual_seed(0)
    model = create_model(name, IN_CHANNELS, NUM_CLASSES, **kwargs).train()
    disabled = disable_dropout(model)
    slab = getattr(model, "slab_size", None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, IN_CHANNELS, *((int(slab),) if slab else ()), *size), generator=gen)
    target = torch.randint(0, NUM_CLASSES, (batch, *size), generator=gen)
    meta = {
        "config": config,
        "kwargs": {k: repr(v) for k, v in kwargs.items()},
        "input_shape": list(x.shape),
        "params": sum(p.numel() for p in model.parameters()),
        "dropout_layers_disabled": disabled,
    }
    return model, x, target, meta


def _gradients(model: Any, x: Any, target: Any) -> dict[str, Any]:
    """Parameter gradients of one cross-entropy forward+backward (no optimizer step)."""
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), target).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _train_step(model: Any, optimizer: Any, x: Any, target: Any) -> Any:
    import torch.nn.functional as F

    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _choose_config(name: str, cfg: dict[str, Any]) -> tuple[str, str]:
    """``(config, reason)`` for ``--config auto``: default size when one eager step fits ``max_step_s``."""
    import torch

    from attnseg.models import model_info

    if cfg["config"] != "auto":
        return cfg["config"], "forced by --config"
    info = model_info(name)
    if info.spatial_dims != 2:
        side = "x".join(map(str, info.default_input_size))
        return "test", f"3D default size {side} not affordable on this CPU"
    model, x, target, _ = _setup(name, "default", cfg["batch"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train_step(model, optimizer, x, target)  # first call allocates
    t0 = time.perf_counter()
    _train_step(model, optimizer, x, target)
    step_s = time.perf_counter() - t0
    if step_s <= cfg["max_step_s"]:
        return "default", f"eager step {step_s:.2f} s <= {cfg['max_step_s']} s at the default size"
    return "test", f"eager step {step_s:.2f} s > {cfg['max_step_s']} s at the default size"


def _worker(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One model: the default ``torch.compile``; if that fails to compile, once more with ``dynamic=False``."""
    import torch._dynamo

    rec = _measure(name, cfg, dynamic=None)
    if rec["status"] != "ok" and rec.get("stage", "").startswith("compile") and cfg["retry_static"]:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        retry = _measure(name, cfg, dynamic=False)
        rec["retry_dynamic_false"] = {k: v for k, v in retry.items() if k != "rounds"}
    return rec


def _float64_errors(initial: Any, x: Any, target: Any, grads_e: dict, grads_c: dict) -> dict[str, float | None]:
    """Eager-float32 and compiled gradient errors against eager float64 (the round-off floor of the comparison)."""
    from attnseg.bench.compile_check import gradient_difference

    try:
        g64 = _gradients(initial.double(), x.double(), target)
        err = {
            key: gradient_difference(grads, g64)[0]  # float32 - float64 is computed in float64
            for key, grads in (("grad_eager_vs_fp64", grads_e), ("grad_compiled_vs_fp64", grads_c))
        }
    except Exception as exc:  # noqa: BLE001 - a model without float64 support keeps the plain threshold
        return {"grad_eager_vs_fp64": None, "grad_compiled_vs_fp64": None, "fp64_error": _first_line(exc)}
    return err


def _progress(cfg: dict[str, Any], rec: dict[str, Any], stage: str) -> None:
    """Leave the record so far where the driver finds it if this process times out."""
    Path(cfg["progress_file"]).write_text(json.dumps({**rec, "stage": stage}))


def _measure(name: str, cfg: dict[str, Any], dynamic: bool | None) -> dict[str, Any]:
    import copy

    import torch
    import torch._dynamo

    from attnseg.bench.compile_check import gradient_difference, gradients_agree, perturbation_floor
    from attnseg.bench.speed import time_interleaved
    from attnseg.models import model_info

    torch.set_num_threads(cfg["threads"])
    rec: dict[str, Any] = {"model": name, "torch_compile_flag": model_info(name).torch_compile, "dynamic": dynamic}
    stage = "setup"
    try:
        config, reason = _choose_config(name, cfg)
        rec["config_reason"] = reason
        eager, x, target, meta = _setup(name, config, cfg["batch"])
        rec.update(meta)
        model_c = copy.deepcopy(eager)  # identical initial weights
        initial = copy.deepcopy(eager)  # for the float64 reference gradients
        perturbed = copy.deepcopy(eager)  # for the conditioning floor
        opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-3)
        opt_c = torch.optim.AdamW(model_c.parameters(), lr=1e-3)
        compiled = torch.compile(model_c, dynamic=dynamic)  # inductor backend, default mode (dynamic=None)

        stage = "eager step"
        _progress(cfg, rec, stage)
        t0 = time.perf_counter()
        loss_e = _train_step(eager, opt_e, x, target)
        rec["eager_first_step_s"] = round(time.perf_counter() - t0, 3)
        grads_e = {n: p.grad.clone() for n, p in eager.named_parameters() if p.grad is not None}

        stage = "compile (first compiled training step)"
        _progress(cfg, rec, stage)
        t0 = time.perf_counter()
        loss_c = _train_step(compiled, opt_c, x, target)
        rec["compile_first_step_s"] = round(time.perf_counter() - t0, 2)
        counters = torch._dynamo.utils.counters
        rec["graph_breaks"] = sum(counters["graph_break"].values())
        rec["graph_break_reasons"] = sorted(counters["graph_break"])[:5]
        rec["unique_graphs"] = counters["stats"].get("unique_graphs", 0)

        stage = "equality check"
        _progress(cfg, rec, stage)
        grads_c = {n: p.grad for n, p in model_c.named_parameters() if p.grad is not None}
        missing = sorted(set(grads_e) ^ set(grads_c))
        rec["loss_eager"] = float(loss_e)
        rec["loss_rel_diff"] = float((loss_c - loss_e).abs() / loss_e.abs().clamp_min(1e-30))
        rec["grad_max_rel_diff"] = gradient_difference(grads_c, grads_e)[0]
        sq = [
            (float((grads_c[n] - g).square().sum()), float(g.square().sum()))
            for n, g in grads_e.items()
            if n in grads_c
        ]
        rec["grad_l2_rel_diff"] = (sum(d for d, _ in sq) / max(sum(r for _, r in sq), 1e-30)) ** 0.5  # all gradients
        rec["grad_params_mismatch"] = missing[:5]
        rec.update(_float64_errors(initial, x, target, grads_e, grads_c))
        rec["grad_perturbation_floor"] = perturbation_floor(lambda inp: _gradients(perturbed, inp, target), x, grads_e)
        close = gradients_agree(rec["grad_max_rel_diff"], rec["grad_perturbation_floor"])  # the conformance rule
        if rec.get("grad_eager_vs_fp64") is not None:  # or no further from float64 than eager float32 is
            close = close or rec["grad_compiled_vs_fp64"] <= 2 * rec["grad_eager_vs_fp64"]
        rec["agree"] = rec["loss_rel_diff"] <= LOSS_RTOL and close and not missing

        stage = "timing"
        _progress(cfg, rec, stage)
        steps = {
            "eager": lambda: _train_step(eager, opt_e, x, target),
            "compiled": lambda: _train_step(compiled, opt_c, x, target),
        }
        probe = time_interleaved(steps, runs=1, warmup=1)
        per_step_s = (probe["eager"]["wall"]["median_ms"] + probe["compiled"]["wall"]["median_ms"]) / 1e3
        runs = max(3, min(50, math.ceil(cfg["round_s"] / max(per_step_s, 1e-3))))
        recompiles_before = counters["stats"].get("unique_graphs", 0)
        rounds = []
        for _ in range(cfg["rounds"]):
            res = time_interleaved(steps, runs=runs, warmup=0, digits=3)
            ratio = res["eager"]["wall"]["median_ms"] / res["compiled"]["wall"]["median_ms"]
            rounds.append({**res, "speedup_wall": round(ratio, 3)})
        ratios = [r["speedup_wall"] for r in rounds]
        rec.update(
            {
                "runs_per_round": runs,
                "rounds": rounds,
                "eager_ms": statistics.median(r["eager"]["wall"]["median_ms"] for r in rounds),
                "compiled_ms": statistics.median(r["compiled"]["wall"]["median_ms"] for r in rounds),
                "speedup_median": round(statistics.median(ratios), 3),
                "speedup_spread": [min(ratios), max(ratios)],
                "graphs_added_while_timing": counters["stats"].get("unique_graphs", 0) - recompiles_before,
                "status": "ok",
            }
        )
    except Exception as exc:  # noqa: BLE001 - reported, the driver goes on with the next model
        rec.update({"status": "failed", "stage": stage, "error": _first_line(exc)})
    return rec


# ---- driver side --------------------------------------------------------------------------------------------------


def _run_model(name: str, cfg: dict[str, Any], cache_root: Path, timeout: float) -> dict[str, Any]:
    cache = cache_root / name
    cold = not (cache.is_dir() and any(cache.iterdir()))
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    progress = cache_root / f"{name}.progress.json"
    progress.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", json.dumps({"name": name, "progress_file": str(progress), **cfg})]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        rec = json.loads(progress.read_text()) if progress.is_file() else {"model": name, "stage": "setup"}
        rec.update(status="timeout", error=f"no result within {timeout:.0f} s (stage reached: {rec['stage']})")
    else:
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
        if lines:
            rec = json.loads(lines[-1][len(_MARK) :])
        else:  # the process died (e.g. a signal) before reporting: its last stderr line says why
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
            rec = {"model": name, "status": "crashed", "error": f"exit {proc.returncode}: {tail[-1].strip()}"}
    rec["process_wall_s"] = round(time.perf_counter() - t0, 1)
    rec["measured"] = time.strftime("%Y-%m-%d %H:%M")
    rec["load_after"] = round(os.getloadavg()[0], 2)
    rec["inductor_cache"] = {"dir": str(cache), "cold": cold}
    return rec


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(doc: dict[str, Any]) -> str:
    from attnseg.bench.compile_check import FLOOR_FACTOR, GRAD_RTOL, PERTURBATION, PERTURBATION_DRAWS

    cfg = doc["settings"]
    colds = {r["inductor_cache"]["cold"] for r in doc["models"]}
    cache = "cold (an empty directory per model)" if colds == {True} else "warm for some models (see the JSON)"
    lines = [
        "# torch.compile (inductor) training-step speed-up per model, CPU",
        "",
        f"Generated {doc['created']} by `python benchmarks/compile_speedup.py`; "
        f"torch {doc['environment']['versions']['torch']}, "
        f"{doc['environment']['host']['cpu']}, {doc['environment']['host']['logical_cpus']} logical CPUs shared with "
        f"other jobs, {cfg['threads']} intra-op thread(s); load average {doc['load_before'][0]:.2f} before, "
        f"{doc['load_after'][0]:.2f} after. Inductor cache: {cache}."
        + ("" if doc.get("complete") else " **Partial: the run was still going when this was written.**")
        + (
            " Records of several runs (`--merge`): each model's measurement time and load are in the JSON "
            "(`measured`, `load_after`)."
            if len({r.get("measured", doc["created"])[:13] for r in doc["models"]}) > 1
            else ""
        ),
        "",
        "Training step = train mode, cross-entropy on a fixed target, backward, AdamW step (dropout off in both). "
        f"Config: `default` = default options at the default input size (used when an eager step takes <= "
        f"{cfg['max_step_s']} s), `test` = the registered test configuration and size. Compile = wall time of the "
        f"first compiled step. Speed-up = eager / compiled median wall per round, {cfg['rounds']} interleaved rounds: "
        "median (min..max). Equality of the first step: loss relative difference and largest gradient difference / "
        f"largest gradient (agree: loss <= {LOSS_RTOL:g} and gradients <= {GRAD_RTOL:g}, or compiled no further "
        f"from eager float64 than 2x eager float32's own error, or gradients within {FLOOR_FACTOR:g}x the "
        "conditioning floor; fp64 "
        "column: eager float32 / compiled error against eager float64, the round-off floor; floor column: the "
        f"largest change of eager float32 gradients when the input is perturbed by a relative {PERTURBATION:g} "
        f"({PERTURBATION_DRAWS} draws), where kinks (ReLU, small-batch BN) make the gradient ill-conditioned).",
        "",
        "| model | config | input | params | compile s | eager 1st s | eager ms | compiled ms | speed-up | "
        "loss diff | grad max diff | grad L2 diff | grad err vs fp64 | floor | agree | graphs / breaks |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|---|---|---|",
    ]
    failures = []
    for r in doc["models"]:
        if r.get("status") != "ok" and "speedup_median" not in r:
            failures.append(r)
        shape = "x".join(map(str, r.get("input_shape", []))) or "-"
        speed = (
            f"{r['speedup_median']:.2f}x ({r['speedup_spread'][0]:.2f}..{r['speedup_spread'][1]:.2f})"
            if "speedup_median" in r
            else f"**{r.get('status')}**"
        )
        agree = {True: "yes", False: "**no**", None: "-"}[r.get("agree")]
        fp64 = f"{_fmt(r.get('grad_eager_vs_fp64'), '.1e')} / {_fmt(r.get('grad_compiled_vs_fp64'), '.1e')}"
        params = f"{r['params'] / 1e6:.2f} M" if "params" in r else "-"
        lines.append(
            f"| {r['model']} | {r.get('config', '-')} | {shape} | {params} | "
            f"{_fmt(r.get('compile_first_step_s'), '.0f')} | {_fmt(r.get('eager_first_step_s'), '.2f')} | "
            f"{_fmt(r.get('eager_ms'), '.1f')} | "
            f"{_fmt(r.get('compiled_ms'), '.1f')} | {speed} | {_fmt(r.get('loss_rel_diff'), '.1e')} | "
            f"{_fmt(r.get('grad_max_rel_diff'), '.1e')} | {_fmt(r.get('grad_l2_rel_diff'), '.1e')} | "
            f"{fp64} | {_fmt(r.get('grad_perturbation_floor'), '.1e')} | {agree} | "
            f"{r.get('unique_graphs', '-')} / {r.get('graph_breaks', '-')} |"
        )
    if failures:
        lines += ["", "Failures (first line of the error):", ""]
        for r in failures:
            lines.append(f"- {r['model']}: {r['status']} at {r.get('stage', 'process')}: `{r['error']}`")
            retry = r.get("retry_dynamic_false")
            if retry is None:
                continue
            if retry["status"] == "ok":
                lo, hi = retry["speedup_spread"]
                lines.append(
                    f"  - retried with `torch.compile(model, dynamic=False)`: works, compile "
                    f"{retry['compile_first_step_s']:.0f} s, speed-up {retry['speedup_median']:.2f}x "
                    f"({lo:.2f}..{hi:.2f}), "
                    f"loss diff {retry['loss_rel_diff']:.1e}, grad diff {retry['grad_max_rel_diff']:.1e}"
                )
            else:
                lines.append(
                    f"  - retried with `torch.compile(model, dynamic=False)`: {retry['status']} at "
                    f"{retry.get('stage')}: `{retry.get('error')}`"
                )
    lines += ["", "Configuration choice per model:", ""]
    lines += [
        f"- {r['model']}: {r.get('config', '-')} ({r.get('config_reason', r.get('error', ''))})" for r in doc["models"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run every selected model in its own subprocess and write ``compile_speedup.{json,md}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", help="model names (default: attnseg.models.list_models())")
    parser.add_argument("--config", choices=["auto", "test", "default"], default="auto")
    parser.add_argument("--max-step-s", type=float, default=1.0, help="auto: largest eager step at the default size")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one ratio each)")
    parser.add_argument("--round-s", type=float, default=1.0, help="target seconds per round (sets runs per round)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per model (subprocess)")
    parser.add_argument("--cache-dir", type=Path, help="inductor cache root (default: a new, so cold, /tmp folder)")
    parser.add_argument(
        "--no-retry-static", action="store_true", help="do not retry a failed compile with dynamic=False"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="compile_speedup")
    parser.add_argument("--render", action="store_true", help="only re-render the .md from the results .json")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other models' records of the existing results .json (this run's models replace theirs)",
    )
    args = parser.parse_args(argv)
    if args.worker:
        cfg = json.loads(args.worker)
        print(_MARK + json.dumps(_worker(cfg.pop("name"), cfg)), flush=True)
        return 0
    if args.render:
        from attnseg.bench.report import save_results

        doc = json.loads((args.results / f"{args.stem}.json").read_text())
        save_results(args.results, args.stem, doc, markdown(doc))
        return 0

    import torch

    from attnseg.models import list_models

    torch.set_num_threads(args.threads)  # recorded by environment_info; each worker sets its own

    names = args.models or list_models()
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    cache_root = args.cache_dir or Path(tempfile.mkdtemp(prefix="attnseg_inductor_cache_", dir="/tmp"))
    cfg = {
        "config": args.config,
        "max_step_s": args.max_step_s,
        "batch": args.batch,
        "threads": args.threads,
        "rounds": args.rounds,
        "round_s": args.round_s,
        "retry_static": not args.no_retry_static,
    }
    load_before = os.getloadavg()
    kept: dict[str, dict[str, Any]] = {}
    if args.merge and (args.results / f"{args.stem}.json").is_file():
        previous = json.loads((args.results / f"{args.stem}.json").read_text())
        kept = {r["model"]: r for r in previous["models"]}  # replaced as this run measures the model again
    records: list[dict[str, Any]] = []
    for name in names:
        rec = _run_model(name, cfg, cache_root, args.timeout)
        records.append(rec)
        _write(args, cfg, cache_root, load_before, _in_registry_order(kept, records), final=False)
        speed = f"{rec['speedup_median']:.2f}x" if "speedup_median" in rec else rec["status"]
        print(
            f"{name:18s} {rec.get('config', '-'):7s} compile {rec.get('compile_first_step_s', '-')} s, speed-up "
            f"{speed}, agree {rec.get('agree', '-')}, {rec.get('error', '')} "
            f"[{rec['process_wall_s']} s, load {os.getloadavg()[0]:.2f}]",
            flush=True,
        )
    _write(args, cfg, cache_root, load_before, _in_registry_order(kept, records), final=True)
    return 0


def _in_registry_order(kept: dict[str, dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's records plus the kept ones of earlier runs (``--merge``), in registry order."""
    from attnseg.models import list_models

    by_name = {**kept, **{r["model"]: r for r in records}}
    return [by_name[n] for n in list_models() if n in by_name]


def _write(
    args: argparse.Namespace,
    cfg: dict[str, Any],
    cache_root: Path,
    load_before: tuple[float, ...],
    records: list[dict[str, Any]],
    final: bool,
) -> None:
    """Results so far (after every model, so a long run that is stopped keeps what it measured)."""
    from attnseg.bench.report import environment_info, save_results

    doc = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "complete": final,
        "settings": {**cfg, "timeout_s": args.timeout, "cache_root": str(cache_root)},
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "models": records,
        "environment": environment_info(),
    }
    save_results(args.results, args.stem, doc, markdown(doc))


if __name__ == "__main__":
    raise SystemExit(main())
