"""Latency (forward, forward+backward) and peak memory of a model.

Latency: ``warmup`` untimed calls, then ``runs`` timed calls (``time.perf_counter``, CUDA synchronised before each
clock read); we report the median and the interquartile range (Q3 - Q1) in milliseconds, which resist the outliers a
shared machine produces, together with the thread count (``torch.get_num_threads()``), batch size and input shape.
"Forward" is inference: eval mode under ``torch.no_grad()``. "Forward+backward" is a training step without the
optimizer: train mode, forward, ``sum`` of the outputs, ``backward``, then gradients reset to ``None`` (inside the
timed window; negligible next to the step, and it makes every call allocate ``.grad`` as a real step does).

Peak memory:

- CUDA: ``torch.cuda.max_memory_allocated`` (exact allocator statistics) minus the allocation before the call.
- CPU: there is no allocator counter, so each figure comes from a **fresh Python subprocess** that builds the same
  model and input, resets the kernel's resident-set high-water mark (``/proc/self/clear_refs`` = 5, Linux), runs the
  call once and reads ``VmHWM``: the figure is the peak RSS increase over the post-build baseline. It includes
  library workspaces and allocator overhead, as a user would see it. The fresh process matters: in a process that
  already ran the model, freed memory stays cached by the allocator and the delta would read near zero. Without
  ``clear_refs`` (non-Linux), ``ru_maxrss`` is used instead and the method says so (an upper bound if building the
  model peaked higher than the call).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.bench.complexity import output_loss

__all__ = [
    "TimingStats",
    "SpeedResult",
    "MemoryResult",
    "ProcessTimer",
    "time_callable",
    "measure_speed",
    "measure_peak_memory",
]

_MB = 1024.0**2


@dataclass(frozen=True)
class TimingStats:
    """Summary of ``runs`` timed calls, in milliseconds."""

    median_ms: float
    iqr_ms: float  # Q3 - Q1
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int


@dataclass
class SpeedResult:
    """Forward and forward+backward latency at one input shape."""

    device: str
    threads: int
    batch_size: int
    input_shape: tuple[int, ...]
    forward: TimingStats
    forward_backward: TimingStats | None  # None when the model has no trainable parameters
    method: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


@dataclass
class MemoryResult:
    """Peak memory of one forward and one forward+backward call, in MiB above the model+input baseline."""

    device: str
    forward_mb: float | None
    forward_backward_mb: float | None
    method: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(fn: Callable[[], Any], runs: int, warmup: int, device: str | torch.device = "cpu") -> TimingStats:
    """Time ``fn``: ``warmup`` untimed calls, then ``runs`` timed calls; median and IQR in ms.

    Args:
        fn: the call to time (it should do its own setup outside, e.g. via a closure).
        runs: timed calls, >= 1.
        warmup: untimed calls first, >= 0.
        device: synchronised around each call when it is a CUDA device.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        _sync(dev)
        times.append((time.perf_counter() - start) * 1000.0)
    q1, med, q3 = (float(v) for v in np.percentile(times, [25, 50, 75]))
    return TimingStats(
        median_ms=med,
        iqr_ms=q3 - q1,
        q1_ms=q1,
        q3_ms=q3,
        min_ms=min(times),
        max_ms=max(times),
        runs=runs,
        warmup=warmup,
    )


def make_step(model: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    """One benchmark call: ``"forward"`` (eval, no grad) or ``"forward_backward"`` (train, mean-of-logits backward)."""
    if mode == "forward":
        model.eval()

        def forward() -> None:
            with torch.no_grad():
                model(x)

        return forward
    model.train()

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        model(x).mean().backward()

    return forward_backward


def summarize_ms(seconds: Sequence[float], digits: int = 2) -> dict[str, float]:
    """Median, quartiles, IQR and minimum (ms) of timings given in seconds."""
    ms = np.asarray(seconds, dtype=float) * 1e3
    q1, med, q3 = (float(v) for v in np.percentile(ms, [25, 50, 75]))
    return {
        "median_ms": round(med, digits),
        "q1_ms": round(q1, digits),
        "q3_ms": round(q3, digits),
        "iqr_ms": round(q3 - q1, digits),
        "min_ms": round(float(ms.min()), digits),
        "n": int(ms.size),
    }


def time_interleaved(
    steps: Mapping[str, Callable[[], Any]],
    runs: int,
    warmup: int,
    context: Callable[[str], contextlib.AbstractContextManager] | None = None,
    digits: int = 2,
) -> dict[str, dict[str, dict[str, float]]]:
    """Time several variants round-robin (so load drifts hit all alike): wall and process-CPU summaries per name.

    ``context(name)``, when given, is entered around each call of that variant (e.g. to swap an implementation).
    """
    wall: dict[str, list[float]] = {n: [] for n in steps}
    cpu: dict[str, list[float]] = {n: [] for n in steps}
    for i in range(warmup + runs):
        for name, step in steps.items():
            with context(name) if context is not None else contextlib.nullcontext():
                c0, t0 = time.process_time(), time.perf_counter()
                step()
                t1, c1 = time.perf_counter(), time.process_time()
            if i >= warmup:
                wall[name].append(t1 - t0)
                cpu[name].append(c1 - c0)
    return {n: {"wall": summarize_ms(wall[n], digits), "process_cpu": summarize_ms(cpu[n], digits)} for n in steps}


def _timing_worker(conn: Any, maker: Callable[[], Mapping[str, Callable[[], Any]]], threads: int) -> None:
    """Worker of :class:`ProcessTimer`: build the steps once, then time one call per request until told to stop."""
    import resource

    torch.set_num_threads(threads)
    try:
        steps = maker()
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", sorted(steps)))
    while (mode := conn.recv()) is not None:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0, t0 = time.process_time(), time.perf_counter()
        steps[mode]()
        t1, c1 = time.perf_counter(), time.process_time()
        conn.send((t1 - t0, c1 - c0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))


class ProcessTimer:
    """Time variants round-robin, each in its own worker process (one address space and allocator per variant).

    :func:`time_interleaved` runs every variant in one process, where one variant's allocations shape the heap the
    next one finds: a model that frees and re-faults hundreds of MB per step (glibc hands large blocks back to the
    kernel) can then run 1.3x faster or slower depending on its neighbour. Here each variant lives in a spawned
    process, built once by ``maker()`` (a picklable callable returning ``{mode: step}``), and the parent asks the
    workers for one call at a time, alternating, so load drifts still hit all alike and only one worker runs at a
    time. Each call reports wall time, process-CPU time and minor page faults.

    Use as a context manager; :meth:`time` returns the summaries of :func:`time_interleaved` plus ``minor_faults``.
    """

    def __init__(self, makers: Mapping[str, Callable[[], Mapping[str, Callable[[], Any]]]], threads: int = 1) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conns: dict[str, Any] = {}
        self._procs: list[Any] = []
        try:
            for name, maker in makers.items():
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_timing_worker, args=(child, maker, threads), daemon=True)
                proc.start()
                self._conns[name] = parent
                self._procs.append(proc)
            for name, conn in self._conns.items():
                status, detail = conn.recv()
                if status != "ready":
                    raise RuntimeError(f"timing worker {name!r} failed to build its steps: {detail}")
        except BaseException:
            self.close()
            raise

    def time(self, mode: str, runs: int, warmup: int, digits: int = 2) -> dict[str, dict[str, dict[str, float]]]:
        """``warmup`` untimed then ``runs`` timed calls of ``mode`` per variant, alternating call by call."""
        wall: dict[str, list[float]] = {n: [] for n in self._conns}
        cpu: dict[str, list[float]] = {n: [] for n in self._conns}
        faults: dict[str, list[float]] = {n: [] for n in self._conns}
        for i in range(warmup + runs):
            for name, conn in self._conns.items():
                conn.send(mode)
                w, c, f = conn.recv()
                if i >= warmup:
                    wall[name].append(w)
                    cpu[name].append(c)
                    faults[name].append(f)
        return {
            n: {
                "wall": summarize_ms(wall[n], digits),
                "process_cpu": summarize_ms(cpu[n], digits),
                "minor_faults": {"median": float(np.median(faults[n])), "n": len(faults[n])},
            }
            for n in self._conns
        }

    def close(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> ProcessTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_input(input_shape: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.randn(tuple(int(s) for s in input_shape), generator=torch.Generator().manual_seed(0)).to(device)


def measure_speed(
    model: nn.Module,
    input_shape: Sequence[int],
    runs: int = 20,
    warmup: int = 5,
    device: str | torch.device = "cpu",
    backward: bool = True,
) -> SpeedResult:
    """Forward (eval, no grad) and forward+backward (train) latency of ``model`` on ``input_shape``.

    Args:
        model: the network; moved to ``device``, train/eval mode restored afterwards.
        input_shape: full input shape ``[B, C, *spatial]``.
        runs: timed calls per measurement.
        warmup: untimed calls before timing.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        backward: also time forward+backward (skipped anyway when no parameter requires grad).

    Returns:
        A :class:`SpeedResult`; set threads with ``torch.set_num_threads`` before calling.
    """
    dev = torch.device(device)
    model.to(dev)
    x = _make_input(input_shape, dev)
    was_training = model.training
    try:
        model.eval()

        def forward() -> None:
            with torch.no_grad():
                model(x)

        fwd = time_callable(forward, runs, warmup, dev)
        fwd_bwd = None
        if backward and any(p.requires_grad for p in model.parameters()):
            model.train()

            def forward_backward() -> None:
                output_loss(model(x)).backward()
                model.zero_grad(set_to_none=True)

            fwd_bwd = time_callable(forward_backward, runs, warmup, dev)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return SpeedResult(
        device=str(dev),
        threads=torch.get_num_threads(),
        batch_size=int(input_shape[0]),
        input_shape=tuple(int(s) for s in input_shape),
        forward=fwd,
        forward_backward=fwd_bwd,
        method=(
            "time.perf_counter per call; forward = eval + torch.no_grad(); forward_backward = train mode, "
            "sum(outputs).backward() + zero_grad(set_to_none=True)"
        ),
    )


# ---------------------------------------------------------------- peak memory


def _cuda_peak(model: nn.Module, x: torch.Tensor, backward: bool) -> float:
    dev = x.device
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    if backward:
        model.train()
        output_loss(model(x)).backward()
    else:
        model.eval()
        with torch.no_grad():
            model(x)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    model.zero_grad(set_to_none=True)
    return (peak - base) / _MB


def _read_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _memory_child() -> None:
    """Entry point of the CPU memory subprocess: job JSON on stdin, one result JSON line on stdout."""
    import resource

    job = json.loads(sys.stdin.read())
    torch.set_num_threads(int(job["threads"]))
    torch.manual_seed(0)
    if job.get("build"):
        from attnseg.models.registry import create_model

        b = job["build"]
        model = create_model(b["name"], in_channels=b["in_channels"], num_classes=b["num_classes"], **b["kwargs"])
    else:
        model = torch.load(job["model_file"], weights_only=False)
    x = torch.randn(tuple(job["input_shape"]))
    backward = bool(job["backward"])
    model.train(backward)
    model.zero_grad(set_to_none=True)

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        method = "clear_refs"
    except OSError:
        method = "ru_maxrss"
    base_kb = _read_status_kb("VmRSS")
    if backward:
        output_loss(model(x)).backward()
    else:
        with torch.no_grad():
            model(x)
    if method == "clear_refs" and base_kb is not None:
        peak_kb = _read_status_kb("VmHWM")
    else:
        method = "ru_maxrss"
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        base_kb = base_kb or 0
    print(json.dumps({"base_kb": base_kb, "peak_kb": peak_kb, "method": method}))


def _cpu_peak_subprocess(job: dict[str, Any], timeout: float) -> tuple[float, str]:
    env = dict(os.environ)
    # The child must import what the parent can (e.g. the module that defines a pickled model class).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run(
        [sys.executable, "-c", "from attnseg.bench.speed import _memory_child; _memory_child()"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory subprocess failed (exit {proc.returncode}): {last}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return max(res["peak_kb"] - res["base_kb"], 0) / 1024.0, res["method"]


def measure_peak_memory(
    model: nn.Module,
    input_shape: Sequence[int],
    device: str | torch.device = "cpu",
    backward: bool = True,
    timeout: float = 900.0,
) -> MemoryResult:
    """Peak memory (MiB above the model+input baseline) of one forward and one forward+backward call.

    On CPU each figure is measured in a fresh subprocess (see the module docstring). A model built by
    :func:`attnseg.models.create_model` is rebuilt there from its registry record (same architecture; weights do not
    matter for memory); any other model is pickled with ``torch.save`` (its class must be importable). Failures leave
    the figures ``None`` with ``error`` set.

    Args:
        model: the network.
        input_shape: full input shape ``[B, C, *spatial]``.
        device: ``"cpu"`` or a CUDA device.
        backward: also measure forward+backward.
        timeout: seconds allowed per CPU subprocess.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        was_training = model.training
        x = _make_input(input_shape, dev)
        model.to(dev)
        try:
            fwd = _cuda_peak(model, x, backward=False)
            fwd_bwd = _cuda_peak(model, x, backward=True) if backward else None
        finally:
            model.train(was_training)
        return MemoryResult(
            device=str(dev),
            forward_mb=fwd,
            forward_backward_mb=fwd_bwd,
            method="torch.cuda.max_memory_allocated minus memory_allocated before the call (one call each)",
        )
    if dev.type != "cpu":
        return MemoryResult(str(dev), None, None, method="none", error=f"peak memory not supported on {dev.type}")

    job: dict[str, Any] = {"input_shape": [int(s) for s in input_shape], "threads": torch.get_num_threads()}
    build = getattr(model, "attnseg_build", None)
    if build:
        try:
            json.dumps(build)
        except TypeError:  # e.g. a module passed as an option: pickle the model instead
            build = None
    tmp_path = None
    try:
        if build:
            job["build"] = build
        else:
            fd, tmp_path = tempfile.mkstemp(suffix=".pt", prefix="attnseg_bench_")
            os.close(fd)
            torch.save(model, tmp_path)
            job["model_file"] = tmp_path
        fwd, method = _cpu_peak_subprocess({**job, "backward": False}, timeout)
        fwd_bwd = None
        if backward:
            fwd_bwd, _ = _cpu_peak_subprocess({**job, "backward": True}, timeout)
    except Exception as exc:  # noqa: BLE001 - memory is an optional figure
        return MemoryResult(str(dev), None, None, method="fresh-subprocess peak RSS", error=str(exc)[:300])
    finally:
        if tmp_path is not None:
            os.unlink(tmp_path)
    how = "peak RSS increase over the post-build baseline in a fresh subprocess, first call, " + (
        "VmHWM after /proc/self/clear_refs reset" if method == "clear_refs" else "ru_maxrss (no reset available)"
    )
    return MemoryResult(device="cpu", forward_mb=fwd, forward_backward_mb=fwd_bwd, method=how)
