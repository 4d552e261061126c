"""Benchmarking: parameters, MACs, true FLOPs, latency and peak memory of registered models.

``attnseg bench`` (``attnseg.cli.bench``) and ``benchmarks/zoo_table.py`` are built on :func:`run_benchmark`.
Why MACs and FLOPs are both reported, and why thop's number is only a compatibility column: see
:mod:`attnseg.bench.complexity`.
"""

from __future__ import annotations

from attnseg.bench.complexity import (
    ComplexityResult,
    ParameterCount,
    count_flops,
    count_parameters,
    fvcore_macs,
    measure_complexity,
    thop_macs,
)
from attnseg.bench.report import environment_info, render_table, run_benchmark
from attnseg.bench.speed import (
    MemoryResult,
    SpeedResult,
    TimingStats,
    measure_peak_memory,
    measure_speed,
    time_callable,
)

__all__ = [
    "ComplexityResult",
    "ParameterCount",
    "count_flops",
    "count_parameters",
    "fvcore_macs",
    "measure_complexity",
    "thop_macs",
    "environment_info",
    "render_table",
    "run_benchmark",
    "MemoryResult",
    "SpeedResult",
    "TimingStats",
    "measure_peak_memory",
    "measure_speed",
    "time_callable",
]
