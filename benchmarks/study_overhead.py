"""Time outside training in ``attnseg study run``: prediction, evaluation, ensembles, costs and the report.

Runs a study from scratch into a fresh directory, times the whole call, and splits it with the jobs' own
``study_job.json`` records (``train_seconds``, ``predict_seconds``, ``evaluate_seconds``). Everything that is not
training (including the ensembles, the complexity counts and the report) is "outside training", measured as the
whole call minus the summed training time, so nothing escapes the count. Writes
``benchmarks/results/study_overhead.json`` and ``.md``.

Usage::

    python benchmarks/study_overhead.py                                   # recipes/studies/demo.yaml
    python benchmarks/study_overhead.py --study my_study.yaml --out /tmp/overhead

The share depends on the training budget (prediction costs the same whatever the budget): the table states it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from attnseg.bench.report import environment_info, save_results
from attnseg.study.config import load_study
from attnseg.study.runner import JOB_FILE, jobs_of, run_study

__all__ = ["main", "markdown"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _sum(records: list[dict[str, Any]], key: str) -> float:
    return float(sum(r.get(key) or 0.0 for r in records))


def measure(study_path: Path, out: Path) -> dict[str, Any]:
    """Run the study into ``out`` (which must not exist) and return the timing document."""
    if out.exists():
        raise SystemExit(f"--out {out} exists: the benchmark needs a fresh study directory")
    study = load_study(study_path)
    t0 = time.perf_counter()
    failed = run_study(study, out, progress=False)
    total = time.perf_counter() - t0
    records = [json.loads((job.run_dir(out) / JOB_FILE).read_text()) for job in jobs_of(study)]
    train = _sum(records, "train_seconds")
    predict = _sum(records, "predict_seconds")
    evaluate = _sum(records, "evaluate_seconds")
    outside = total - train
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "study": str(study_path.relative_to(ROOT) if study_path.is_relative_to(ROOT) else study_path),
        "jobs": len(records),
        "failed": [str(r.job) for r in failed],
        "iterations": study.train.get("iterations"),
        "images_predicted": int(sum(r.get("images") or 0 for r in records)),
        "seconds": {
            "total": round(total, 1),
            "training": round(train, 1),
            "prediction": round(predict, 1),
            "evaluation": round(evaluate, 1),
            "ensembles_costs_report": round(outside - predict - evaluate, 1),
            "outside_training": round(outside, 1),
        },
        "outside_training_share": round(outside / total, 4),
        "environment": environment_info(),
    }


def markdown(doc: dict[str, Any]) -> str:
    s = doc["seconds"]
    rows = [
        ("training", s["training"]),
        ("prediction (inference)", s["prediction"]),
        ("evaluation (saving + metrics)", s["evaluation"]),
        ("ensembles, costs and report", s["ensembles_costs_report"]),
        ("**outside training**", s["outside_training"]),
        ("**total**", s["total"]),
    ]
    lines = [
        "# Time outside training in `attnseg study run`",
        "",
        f"Generated {doc['created']} by `python benchmarks/study_overhead.py --study {doc['study']}`: "
        f"{doc['jobs']} jobs of {doc['iterations']} training iterations, {doc['images_predicted']} images predicted "
        "after training (the validation cases' label maps come from training's own validation of the best "
        "checkpoint, `RUN/validation/`), one process on this machine's CPU.",
        "",
        "| Phase | Seconds | Share |",
        "|---|---:|---:|",
        *[f"| {name} | {value:.1f} | {100 * value / s['total']:.1f} % |" for name, value in rows],
        "",
        f"Outside training: **{100 * doc['outside_training_share']:.1f} %** of the study's wall time.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=ROOT / "recipes" / "studies" / "demo.yaml")
    parser.add_argument("--out", type=Path, default=Path("/tmp/attnseg-study-overhead"))
    parser.add_argument("--keep", action="store_true", help="keep the study directory afterwards")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    doc = measure(args.study.resolve(), args.out)
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)
    save_results(args.results, "study_overhead", doc, markdown(doc))
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
