"""Model zoo table: ``attnseg bench`` for every registered model at its default input size.

Writes ``benchmarks/results/zoo.json`` (every record, as ``attnseg bench --json`` would, plus failures) and
``benchmarks/results/zoo.md`` (params, MACs, FLOPs, CPU latency), the table the README shows. Results are rewritten
after every model, so an interrupted run keeps what it measured.

Usage::

    python benchmarks/zoo_table.py                      # all registered models, 3 timed runs each
    python benchmarks/zoo_table.py --models unet malunet --runs 10 --memory

Latency depends on the host and its load: the table states CPU, threads and run counts; compare rows measured in one
run only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from attnseg.bench.complexity import mac_bearing
from attnseg.bench.report import environment_info, run_benchmark
from attnseg.io import write_json
from attnseg.models.registry import list_models, model_info

__all__ = ["main", "markdown_table"]

RESULTS = Path(__file__).resolve().parent / "results"


def _g(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f}"


def _ms(t: dict[str, Any] | None) -> str:
    return "n/a" if not t else f"{t['median_ms']:.0f} ({t['iqr_ms']:.0f})"


def markdown_table(doc: dict[str, Any]) -> str:
    """The README table (Markdown) for a ``zoo.json`` document."""
    s = doc["settings"]
    env = doc["environment"]
    v, host = env["versions"], env["host"]
    threads = "/".join(str(t) for t in sorted({r["latency"]["threads"] for r in doc["results"]})) or "n/a"
    lines = [
        "# attnseg model zoo: size and cost",
        "",
        f"Generated {doc['created']} by `python benchmarks/zoo_table.py` "
        f"(each row is `attnseg bench --model NAME --in-channels {s['in_channels']} "
        f"--num-classes {s['num_classes']}` at the model's default input size).",
        "",
        "| Model | Input | Params (M) | MACs (G) | FLOPs (G) | thop MACs (G) "
        "| CPU fwd ms (IQR) | CPU fwd+bwd ms (IQR) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in doc["results"]:
        cx = r["complexity"]
        macs = _g(cx["macs_fvcore"])
        skipped = mac_bearing(cx.get("fvcore_unsupported_ops") or {})
        if skipped:
            macs += " †"
            notes.append(f"{r['model']['name']}: fvcore skipped {', '.join(skipped)}")
        lat = r["latency"]
        lines.append(
            f"| `{r['model']['name']}` | {'x'.join(map(str, r['input_size']))} | {r['params']['total'] / 1e6:.2f} "
            f"| {macs} | {_g(cx['flops'])} | {_g(cx['macs_thop'])} | {_ms(lat['forward'])} "
            f"| {_ms(lat['forward_backward'])} |"
        )
    lines += [
        "",
        '- **MACs**: fvcore `FlopCountAnalysis` (one fvcore "flop" is one multiply-accumulate). '
        "**FLOPs**: `torch.utils.flop_counter.FlopCounterMode`, 2 per multiply-accumulate, counting functional "
        "attention (matmul, SDPA). **thop MACs**: `thop.profile`, which sees only `nn.Module` hooks and misses "
        'functional matmul/attention; given only to compare with paper tables, which often print it as "FLOPs".',
        "- Complexity is per sample (batch 1), one forward pass in eval mode; batch-norm and other element-wise "
        "work are not in FLOPs (fvcore counts batch-norm), so MACs and FLOPs/2 differ slightly.",
        f"- Latency: median (interquartile range) of {s['runs']} timed runs after {s['warmup']} warm-up run(s), batch "
        f"{s['batch_size']}, {threads} torch thread(s) on {host['cpu']} ({host['logical_cpus']} logical CPUs). "
        "fwd = eval + no_grad; fwd+bwd = train mode, backward of the summed logits. Absolute times depend on the "
        "host and its load: compare rows of one run.",
        f"- Tools: torch {v['torch']}, fvcore {v['fvcore']}, thop {v['thop']}, timm {v['timm']}, monai {v['monai']}, "
        f"python {v['python']}.",
    ]
    if notes:
        lines.append(
            "- † fvcore has no handle for some multiply-accumulate ops, so its MACs are too low: "
            + "; ".join(notes)
            + "."
        )
    if doc["failures"]:
        lines.append("- Not measured: " + "; ".join(f"`{f['model']}` ({f['error']})" for f in doc["failures"]) + ".")
    return "\n".join(lines) + "\n"


README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- zoo:start -->", "<!-- zoo:end -->"


def _write_markdown(doc: dict[str, Any], out_dir: Path) -> None:
    md = out_dir / "zoo.md"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(markdown_table(doc))
    tmp.replace(md)
    _update_readme(markdown_table(doc))


def _update_readme(table: str) -> None:
    """Replace the README's model-zoo section (between the zoo markers) with ``table`` minus its title."""
    if not README.exists():
        return
    text = README.read_text()
    if START not in text or END not in text:
        return
    body = "\n".join(line for line in table.splitlines() if not line.startswith("# "))
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    tmp = README.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{START}\n{body.strip()}\n{END}{tail}")
    tmp.replace(README)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="subset of registered names (default: all)")
    parser.add_argument("--skip", nargs="*", default=[], help="registered names to leave out")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per latency figure")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's setting)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (2 subprocesses per model)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite zoo.md and the README's zoo table from an existing zoo.json"
    )
    args = parser.parse_args(argv)
    if args.render_only:
        _write_markdown(json.loads((args.out_dir / "zoo.json").read_text()), args.out_dir)
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # this process only measures, so set it once for every record

    names = args.models or list_models()
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    names = [n for n in names if n not in set(args.skip)]
    settings = {k: getattr(args, k) for k in ("runs", "warmup", "batch_size", "in_channels", "num_classes", "threads")}
    doc: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "models_requested": names,
        "results": [],
        "failures": [],
        "environment": environment_info(),
    }
    for name in names:
        start = time.perf_counter()
        print(f"[zoo] {name} at {model_info(name).default_input_size} ...", flush=True)
        try:
            record = run_benchmark(
                name,
                in_channels=args.in_channels,
                num_classes=args.num_classes,
                batch_size=args.batch_size,
                runs=args.runs,
                warmup=args.warmup,
                threads=args.threads,
                memory=args.memory,
            )
            doc["results"].append(record)
            cx = record["complexity"]
            print(
                f"[zoo]   params {record['params']['total']:,}  FLOPs {_g(cx['flops'])} G  "
                f"fwd {_ms(record['latency']['forward'])} ms  (took {time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        except Exception as exc:  # noqa: BLE001 - one broken model must not stop the table
            err = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
            doc["failures"].append({"model": name, "error": err})
            print(f"[zoo]   FAILED {err}", file=sys.stderr, flush=True)
        doc["models_included"] = [r["model"]["name"] for r in doc["results"]]
        write_json(args.out_dir / "zoo.json", doc)
        _write_markdown(doc, args.out_dir)
    print(f"[zoo] {len(doc['results'])} measured, {len(doc['failures'])} failed -> {args.out_dir}")
    return 0 if not doc["failures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
