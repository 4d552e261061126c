"""Wall time of ``attnseg check-data`` (:func:`attnseg.data.check.check_dataset`) on a 3D dataset.

Writes a synthetic CT dataset (``--cases`` training cases of ``--shape`` voxels, int16 HU image + uint8 label,
``.nii.gz``, with the generator of ``tests/synthetic.py``) into a temporary folder, then times:

- ``cold``: no cache; every header and every voxel is read (for each worker count in ``--workers``);
- ``warm``: the second check of the unchanged dataset, served by the per-file cache (only ``stat`` calls);
- ``headers_only``: no cache, no voxels (``--headers-only``).

Each figure is the median of ``--repeats`` runs. Writes ``benchmarks/results/check_data_speed.json``.

Usage: ``python benchmarks/check_data_speed.py [--cases 100] [--shape 64 64 32] [--workers 1 2 4]``
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic-data generator of the test suite

from synthetic import make_ct_dataset  # noqa: E402

from attnseg.bench.report import environment_info  # noqa: E402
from attnseg.data.check import check_dataset  # noqa: E402
from attnseg.io import write_json  # noqa: E402


def _median_seconds(fn, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def measure(cases: int, shape: tuple[int, int, int], workers: list[int], repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ATTNSEG_CACHE_DIR"] = str(Path(tmp) / "cache")
        t0 = time.perf_counter()
        ds = make_ct_dataset(Path(tmp) / "Dataset999_Speed", num_train=cases, num_test=0, shape=shape)
        written = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in ds.rglob("*") if p.is_file()) / 2**20
        cold = {}
        for n in workers:
            seconds, report = _median_seconds(lambda n=n: check_dataset(ds, workers=n, cache=False), repeats)
            assert report.ok and report.files_read == 2 * cases, report.summary()
            cold[str(n)] = round(seconds, 3)
        check_dataset(ds)  # fills the cache
        warm, report = _median_seconds(lambda: check_dataset(ds), repeats)
        assert report.files_read == 0 and report.files_cached == 2 * cases
        headers, _ = _median_seconds(lambda: check_dataset(ds, voxels=False, cache=False), repeats)
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cases": cases,
        "shape": list(shape),
        "files": 2 * cases,
        "dataset_mib": round(size_mb, 1),
        "write_seconds": round(written, 2),
        "cold_seconds_by_workers": cold,
        "warm_seconds": round(warm, 4),
        "headers_only_seconds": round(headers, 3),
        "repeats": repeats,
        "environment": environment_info(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "check_data_speed.json")
    args = parser.parse_args(argv)
    doc = measure(args.cases, tuple(args.shape), args.workers, args.repeats)
    write_json(args.out, doc)
    print(
        f"{doc['cases']} cases of {'x'.join(map(str, doc['shape']))} ({doc['dataset_mib']} MiB): cold "
        + ", ".join(f"{s} s with {n} worker(s)" for n, s in doc["cold_seconds_by_workers"].items())
        + f"; warm (cached) {doc['warm_seconds']} s; headers only {doc['headers_only_seconds']} s"
    )
    return doc


if __name__ == "__main__":
    main()
