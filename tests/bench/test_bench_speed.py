"""Latency and peak-memory measurement: structure and sanity of the figures (no timing assertions)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from attnseg.bench.report import run_benchmark
from attnseg.bench.speed import measure_peak_memory, measure_speed, time_callable
from attnseg.io import write_json

_BIG = 64 * 1024 * 1024 // 4  # float32 elements in 64 MiB


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class AllocatesDuringForward(nn.Module):
    """Materialises a 64 MiB temporary inside forward: the peak-memory figure must see it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.ones(_BIG)
        return self.conv(x) + scratch[:1].sum() - 1.0


def test_time_callable_calls_and_summarises() -> None:
    calls = []
    stats = time_callable(lambda: calls.append(1), runs=7, warmup=3)
    assert len(calls) == 10
    assert stats.runs == 7 and stats.warmup == 3
    assert 0 <= stats.min_ms <= stats.q1_ms <= stats.median_ms <= stats.q3_ms <= stats.max_ms
    assert stats.iqr_ms == pytest.approx(stats.q3_ms - stats.q1_ms)
    with pytest.raises(ValueError, match="runs"):
        time_callable(lambda: None, runs=0, warmup=0)
    with pytest.raises(ValueError, match="warmup"):
        time_callable(lambda: None, runs=1, warmup=-1)


def test_measure_speed_structure() -> None:
    net = SmallNet().train()
    result = measure_speed(net, (2, 3, 16, 16), runs=3, warmup=1)
    assert net.training and all(p.grad is None for p in net.parameters())
    assert result.threads == torch.get_num_threads()
    assert result.batch_size == 2 and result.input_shape == (2, 3, 16, 16) and result.device == "cpu"
    for stats in (result.forward, result.forward_backward):
        assert stats is not None and stats.runs == 3 and stats.warmup == 1
        assert stats.median_ms > 0 and stats.iqr_ms >= 0
    d = result.to_dict()
    assert set(d) >= {"device", "threads", "batch_size", "input_shape", "forward", "forward_backward", "method"}
    json.dumps(d)


def test_measure_speed_skips_backward_without_trainable_parameters() -> None:
    net = SmallNet().requires_grad_(False)
    assert measure_speed(net, (1, 3, 8, 8), runs=1, warmup=0).forward_backward is None


def test_cpu_peak_memory_sees_a_64_mib_temporary() -> None:
    # Fresh-subprocess RSS measurement on a pickled model (class importable from this test module).
    result = measure_peak_memory(AllocatesDuringForward(), (1, 3, 8, 8))
    assert result.error is None, result.error
    assert "fresh subprocess" in result.method
    assert 60.0 <= result.forward_mb < 200.0
    assert result.forward_backward_mb is not None and result.forward_backward_mb >= 60.0


def test_run_benchmark_record_and_atomic_write(tmp_path) -> None:
    from attnseg.bench.complexity import count_parameters
    from attnseg.models import create_model

    record = run_benchmark(
        "unet",
        input_size=[32, 32],
        in_channels=1,
        num_classes=3,
        batch_size=2,
        runs=1,
        warmup=0,
        model_kwargs={"width": 4},
        memory=False,
    )
    expected = count_parameters(create_model("unet", 1, 3, width=4))
    assert record["params"] == {"total": expected.total, "trainable": expected.trainable}
    assert record["input_size"] == [32, 32]
    assert record["complexity"]["input_shape"] == [1, 1, 32, 32] and record["complexity"]["batch_size"] == 1
    assert record["complexity"]["flops"] > 0 and record["complexity"]["macs_fvcore"] > 0
    assert record["latency"]["input_shape"] == [2, 1, 32, 32]
    assert record["memory"] is None
    assert set(record["environment"]["versions"]) >= {"torch", "fvcore", "thop", "timm", "monai", "python"}
    assert record["environment"]["host"]["torch_threads"] == torch.get_num_threads()

    out = write_json(tmp_path / "sub" / "bench.json", record)
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it, not mkstemp's 0600


def test_run_benchmark_rejects_bad_requests() -> None:
    with pytest.raises(KeyError, match="unknown model"):
        run_benchmark("no_such_model", memory=False)
    with pytest.raises(ValueError, match="needs 2 values"):
        run_benchmark("unet", input_size=[32, 32, 32], memory=False)
    with pytest.raises(ValueError, match="16"):
        run_benchmark("unet", input_size=[8, 8], model_kwargs={"width": 4}, memory=False)
    with pytest.raises(ValueError, match="batch_size"):
        run_benchmark("unet", batch_size=0, memory=False)


class SlabNet(nn.Module):
    """A 2D net fed K adjacent slices ``[B, C, K, H, W]`` (the registry tag ``"slab"``), predicting the centre."""

    slab_size = 3

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels * self.slab_size, num_classes, 1, bias=False)

    def validate_input_size(self, spatial: tuple[int, ...]) -> None:
        if len(spatial) != 3 or spatial[0] != self.slab_size:
            raise ValueError(f"expected (K={self.slab_size}, H, W), got {spatial}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.flatten(1, 2))


def test_slab_models_get_k_slices(monkeypatch) -> None:
    from attnseg.models import registry

    info = registry.ModelInfo("_slab_probe", SlabNet, spatial_dims=2, default_input_size=(8, 8), tags=("slab",))
    registry.list_models()  # import every model first, so the probe is removed again afterwards
    monkeypatch.setitem(registry._REGISTRY, "_slab_probe", info)
    record = run_benchmark("_slab_probe", in_channels=2, num_classes=1, runs=1, warmup=0, memory=False)
    assert record["input_size"] == [3, 8, 8]
    assert record["complexity"]["input_shape"] == [1, 2, 3, 8, 8]
    assert record["complexity"]["flops"] == 2 * (2 * 3) * 1 * 8 * 8  # 1x1 conv, 6 -> 1 channels
    assert record["input_layout"].startswith("B C K H W")
    assert run_benchmark("_slab_probe", input_size=[3, 8, 8], runs=1, warmup=0, memory=False)["input_size"] == [3, 8, 8]
    with pytest.raises(ValueError, match="K=3"):
        run_benchmark("_slab_probe", input_size=[5, 8, 8], memory=False)


def test_time_interleaved_runs_each_variant_inside_its_context():
    import contextlib

    from attnseg.bench.speed import time_interleaved

    calls: list[str] = []
    entered: list[str] = []

    @contextlib.contextmanager
    def context(name):
        entered.append(name)
        yield

    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    out = time_interleaved(steps, runs=3, warmup=1, context=context)
    assert calls == ["a", "b"] * 4 and entered == calls  # round-robin, warm-up included, context around each call
    assert set(out) == {"a", "b"} and out["a"]["wall"]["n"] == 3 and out["b"]["process_cpu"]["n"] == 3
    assert out["a"]["wall"]["median_ms"] >= 0


def _sleeping_steps(seconds: float) -> dict:
    import time as _time

    return {"step": lambda: _time.sleep(seconds)}


def _failing_steps() -> dict:
    raise ValueError("no such model")


def test_process_timer_times_each_variant_in_its_own_process():
    import functools

    from attnseg.bench.speed import ProcessTimer

    makers = {"slow": functools.partial(_sleeping_steps, 0.06), "fast": functools.partial(_sleeping_steps, 0.02)}
    with ProcessTimer(makers) as timer:
        out = timer.time("step", runs=3, warmup=1)
        procs = list(timer._procs)
    assert set(out) == {"slow", "fast"}
    assert out["slow"]["wall"]["n"] == out["fast"]["wall"]["n"] == 3
    assert 55 <= out["slow"]["wall"]["median_ms"] < 120 and 18 <= out["fast"]["wall"]["median_ms"] < 60
    assert out["slow"]["process_cpu"]["median_ms"] < 20  # sleeping costs no CPU: the clock is the worker's own
    assert out["slow"]["minor_faults"]["n"] == 3
    assert all(not p.is_alive() for p in procs)  # workers stopped on exit


def test_process_timer_reports_a_worker_that_cannot_build_its_steps():
    from attnseg.bench.speed import ProcessTimer

    with pytest.raises(RuntimeError, match=r"'broken' failed to build its steps: ValueError: no such model"):
        ProcessTimer({"broken": _failing_steps})
