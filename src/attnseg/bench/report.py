"""The benchmark record: one JSON document with every figure, how it was measured and the tool versions.

:func:`run_benchmark` builds a registered model and measures it (complexity at batch 1, the field's convention;
latency and memory at the requested batch size); :func:`attnseg.io.write_json` writes the record so that a reader never
sees a half-written file; :func:`render_table` turns it into the rich table ``attnseg bench`` prints.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Sequence
from typing import Any

from attnseg.errors import AttnsegError

__all__ = [
    "BenchError",
    "SCHEMA",
    "environment_info",
    "resolve_input_size",
    "run_benchmark",
    "render_table",
    "format_count",
    "results_header",
    "save_results",
]

SCHEMA = "attnseg.bench/1"


class BenchError(AttnsegError, ValueError):
    """A benchmark request the model or machine cannot serve (size, options, batch, device)."""


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: str = "cpu") -> dict[str, Any]:
    """Tool versions and host description to store next to the figures."""
    import torch

    env: dict[str, Any] = {
        "versions": {
            "attnseg": _version("attnseg"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "fvcore": _version("fvcore"),
            "thop": _version("thop"),
            "timm": _version("timm"),
            "monai": _version("monai"),
            "numpy": _version("numpy"),
        },
        "host": {
            "platform": platform.platform(),
            "cpu": _cpu_name(),
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["host"]["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["versions"]["cuda"] = torch.version.cuda
        env["versions"]["cudnn"] = torch.backends.cudnn.version()
    return env


def resolve_input_size(name: str, input_size: Sequence[int] | None) -> tuple[int, ...]:
    """The spatial size to benchmark ``name`` at: ``input_size`` checked against the model's dimensionality, or
    the registry's ``default_input_size``.

    Models tagged ``"slab"`` (2D networks fed K adjacent slices, input ``[B, C, K, H, W]``) also accept
    ``(K, H, W)``; :func:`run_benchmark` adds K from the model when only ``(H, W)`` is given.

    Raises:
        KeyError: unknown model.
        ValueError: wrong number of values or a non-positive side.
    """
    from attnseg.models.registry import model_info

    info = model_info(name)
    if not input_size:
        return tuple(info.default_input_size)
    size = tuple(int(s) for s in input_size)
    allowed = (info.spatial_dims, info.spatial_dims + 1) if "slab" in info.tags else (info.spatial_dims,)
    if len(size) not in allowed:
        example = " ".join(str(s) for s in info.default_input_size)
        extra = " (or K H W: a slab of K slices)" if len(allowed) > 1 else ""
        raise BenchError(
            f"model {name!r} is {info.spatial_dims}D: --input-size needs {info.spatial_dims} values{extra} "
            f"(e.g. --input-size {example}), got {len(size)}: {list(size)}"
        )
    if min(size) < 1:
        raise BenchError(f"input sizes must be positive, got {list(size)}")
    return size


def run_benchmark(
    name: str,
    input_size: Sequence[int] | None = None,
    in_channels: int = 3,
    num_classes: int = 2,
    batch_size: int = 1,
    runs: int = 20,
    warmup: int = 5,
    device: str = "cpu",
    model_kwargs: dict[str, Any] | None = None,
    threads: int | None = None,
    memory: bool = True,
    backward: bool = True,
) -> dict[str, Any]:
    """Build the registered model ``name`` and measure it; returns the JSON-ready record.

    Args:
        name: registered model name (``attnseg models`` lists them).
        input_size: spatial size (2 or 3 values); ``None`` takes the registry's ``default_input_size``.
        in_channels: image channels.
        num_classes: output channels.
        batch_size: batch for latency and memory (complexity is always reported per image, batch 1).
        runs: timed calls per latency figure.
        warmup: untimed calls before timing.
        device: ``"cpu"`` or a CUDA device.
        model_kwargs: architecture options passed to the model factory.
        threads: ``torch.set_num_threads`` for the measurement (restored afterwards); ``None`` keeps the current.
        memory: measure peak memory (on CPU this starts two fresh subprocesses).
        backward: also measure forward+backward latency and memory.

    Raises:
        KeyError: unknown model.
        BenchError: bad size, batch, device or options, or a size the model cannot take.
    """
    import torch

    from attnseg.bench.complexity import measure_complexity
    from attnseg.bench.speed import measure_peak_memory, measure_speed
    from attnseg.models.registry import batchnorm_values, check_input_size, create_model, model_info, sized_kwargs

    if batch_size < 1:
        raise BenchError(f"batch_size must be >= 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise BenchError(f"threads must be >= 1, got {threads}")
    from attnseg.config import ConfigError, resolve_device

    try:
        dev = resolve_device(device)
    except ConfigError as exc:
        raise BenchError(str(exc)) from None
    info = model_info(name)
    size = resolve_input_size(name, input_size)
    kwargs = dict(model_kwargs or {})
    try:
        model = create_model(name, in_channels=in_channels, num_classes=num_classes, **sized_kwargs(name, size, kwargs))
    except (TypeError, ValueError) as exc:  # an option the factory does not take, or a value it refuses
        if isinstance(exc, TypeError) and "argument" not in str(exc):
            raise
        raise BenchError(f"cannot build {name!r} with options {kwargs}: {exc}") from exc
    slab = "slab" in info.tags
    if slab and len(size) == info.spatial_dims:
        size = (int(model.slab_size), *size)  # slab models take [B, C, K, H, W]
    try:
        check_input_size(model, size)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    if backward:  # the timed training step: train-mode BatchNorm needs two values per channel
        with torch.no_grad(), batchnorm_values(model.eval()) as values:
            model(torch.zeros(1, in_channels, *size))
        single = [name for name, n in values.items() if n * batch_size < 2]
        if single:
            raise BenchError(
                f"--batch-size {batch_size}: at input size {' x '.join(map(str, size))} BatchNorm {single[0]!r} sees "
                "one value per channel in training; use a batch of 2 or more, or a larger input size"
            )
    layout = "B C K H W (slab of K adjacent slices)" if slab else ("B C H W" if len(size) == 2 else "B C D H W")

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        complexity = measure_complexity(model, (1, in_channels, *size), device=dev)
        shape = (batch_size, in_channels, *size)
        speed = measure_speed(model, shape, runs=runs, warmup=warmup, device=dev, backward=backward)
        mem = measure_peak_memory(model, shape, device=dev, backward=backward) if memory else None
        env = environment_info(str(dev))
    finally:
        torch.set_num_threads(old_threads)

    cx = complexity.to_dict()
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": {
            "name": name,
            "spatial_dims": info.spatial_dims,
            "in_channels": in_channels,
            "num_classes": num_classes,
            "kwargs": kwargs,
            "paper": info.paper,
            "official_repo": info.official_repo,
        },
        "input_size": list(size),
        "input_layout": layout,
        "params": cx.pop("params"),
        "complexity": {
            **cx,
            "batch_size": 1,
            "tools": {
                "flops": "torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-accumulate; "
                "+ CPU flash-SDPA formula)",
                "macs_fvcore": "fvcore.nn.FlopCountAnalysis total (fvcore 'flops' are MACs)",
                "macs_thop": "thop.profile (module hooks only: functional matmul/SDPA count 0)",
            },
        },
        "latency": speed.to_dict(),
        "memory": mem.to_dict() if mem is not None else None,
        "environment": env,
    }


def format_count(n: float | int | None, unit: str = "") -> str:
    """``1234567`` -> ``"1.23 M"``; ``None`` -> ``"n/a"``."""
    if n is None:
        return "n/a"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _timing_text(t: dict[str, Any] | None) -> str:
    if not t:
        return "n/a"
    return f"{t['median_ms']:.1f} ms (IQR {t['iqr_ms']:.1f})"


def render_table(record: dict[str, Any]) -> Any:
    """A ``rich.table.Table`` summarising a :func:`run_benchmark` record."""
    from rich.table import Table

    m, cx, lat, mem = record["model"], record["complexity"], record["latency"], record["memory"]
    size = "x".join(str(s) for s in record["input_size"])
    table = Table(title=f"{m['name']}  ({m['in_channels']} -> {m['num_classes']} channels, {size})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("how", style="dim")
    p = record["params"]
    table.add_row("params (total)", f"{p['total']:,}", format_count(p["total"]))
    table.add_row("params (trainable)", f"{p['trainable']:,}", "requires_grad")
    from attnseg.bench.complexity import mac_bearing

    skipped = mac_bearing(cx.get("fvcore_unsupported_ops") or {})
    fv_note = "fvcore, batch 1" + (f"; TOO LOW, skipped {', '.join(skipped)}" if skipped else "")
    table.add_row("MACs", format_count(cx.get("macs_fvcore")), cx.get("fvcore_error") or fv_note)
    table.add_row("FLOPs", format_count(cx.get("flops")), cx.get("flops_error") or "FlopCounterMode, batch 1")
    if cx.get("params_thop") is not None:
        table.add_row("params (thop-compat)", f"{cx['params_thop']:,}", "thop: only modules it has a rule for")
    table.add_row(
        "MACs (thop-compat)",
        format_count(cx.get("macs_thop")),
        cx.get("thop_error") or "thop: misses functional matmul/SDPA",
    )
    where = f"{lat['device']}, {lat['threads']} thr, batch {lat['batch_size']}, n={lat['forward']['runs']}"
    table.add_row("latency forward", _timing_text(lat.get("forward")), f"median, {where}")
    table.add_row("latency fwd+bwd", _timing_text(lat.get("forward_backward")), f"median, {where}")
    if mem is not None:
        how = mem.get("error") or (
            "fresh subprocess, peak RSS increase" if mem.get("device") == "cpu" else "max_memory_allocated increase"
        )
        for key, label in (("forward_mb", "peak memory forward"), ("forward_backward_mb", "peak memory fwd+bwd")):
            v = mem.get(key)
            table.add_row(label, "n/a" if v is None else f"{v:.1f} MiB", how)
            how = ""
    v = record["environment"]["versions"]
    table.caption = (
        f"torch {v['torch']}, fvcore {v['fvcore']}, thop {v['thop']}, python {v['python']}; "
        f"{record['environment']['host']['cpu']}"
    )
    return table


def results_header(benchmark: str, method: str | None, **settings: Any) -> dict[str, Any]:
    """The opening fields of a benchmark script's record: what ran, when, its settings, the load before it, the
    machine (:func:`environment_info`) and the method text; the script adds its figures and ``load_average_end``."""
    return {
        "benchmark": benchmark,
        "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **settings,
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "environment": environment_info(),
        "method": method,
    }


def save_results(folder: str | os.PathLike, stem: str, doc: dict[str, Any], markdown: str) -> None:
    """A benchmark's record: ``FOLDER/STEM.json`` (the figures) and ``FOLDER/STEM.md`` (their table), also printed."""
    from pathlib import Path

    from attnseg.io import write_json, write_text

    write_json(Path(folder) / f"{stem}.json", doc)
    write_text(Path(folder) / f"{stem}.md", markdown)
    print(markdown)
