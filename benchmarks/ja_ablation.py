"""Joint Attention DenseUNet ablation on the bundled demo CT: attention = none | point | self | joint.

Each setting trains ``ja_denseunet_small`` briefly with the same seed, data and schedule, then is evaluated on the
held-out test scan (strict protocol). Results (validation and test Dice per organ, params, FLOPs, CPU latency) go
to ``benchmarks/results/ja_ablation.json`` and ``.md``. Usage: ``python benchmarks/ja_ablation.py [--iterations N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from attnseg.bench import measure_complexity, measure_speed
from attnseg.demo import demo_config, evaluate_on_test
from attnseg.io import write_json
from attnseg.models.registry import create_model
from attnseg.training.trainer import train

SETTINGS = ("none", "point", "self", "joint")
SIZE = 128  # the bottleneck is 4x4 at 128; attention sits at the first decoder stage (8x8) to have room to act


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for attention in SETTINGS:
            kwargs = {"attention": attention, "input_size": [SIZE, SIZE], "attention_positions": ["up1"]}
            cfg = dataclasses.replace(
                demo_config(Path(tmp) / attention, iterations=args.iterations, device="cpu"),
                model="ja_denseunet_small",
                model_kwargs=kwargs,
                input_size=[SIZE, SIZE],
                optimizer="adam",
                lr=1e-3,
                scheduler="constant",
                warmup_iterations=0,
                num_workers=0,
            )
            summary = train(cfg, progress=False)
            test = evaluate_on_test(Path(cfg.out), Path(tmp) / attention, overlays=False)
            model = create_model("ja_denseunet_small", 1, 9, **kwargs).eval()
            complexity = measure_complexity(model, (1, 1, SIZE, SIZE), use_thop=False)
            speed = measure_speed(model, (1, 1, SIZE, SIZE), runs=10, warmup=2)
            rows.append(
                {
                    "attention": attention,
                    "params": sum(p.numel() for p in model.parameters()),
                    "flops_g": complexity.flops / 1e9 if complexity.flops else None,
                    "latency_ms": speed.forward.median_ms,
                    "val_dice_mean": summary["best_val_dice"],
                    "test_dice": {k: v["dice"] for k, v in test["per_class"].items()},
                    "test_dice_fg_mean": test["foreground_mean"]["dice"],
                    # the mean over the organs the test scan contains (absent organs score 1 when not predicted)
                    "test_dice_present_mean": float(
                        np.mean(
                            [
                                v["dice"]
                                for k, v in test["per_class"].items()
                                if test["counts"]["per_class"][k]["gt_present"]
                            ]
                        )
                    ),
                }
            )
            print(json.dumps(rows[-1]))
    record = {
        "iterations": args.iterations,
        "input_size": SIZE,
        "model": "ja_denseunet_small",
        "attention_positions": ["up1"],
        "rows": rows,
    }
    write_json(args.out / "ja_ablation.json", record)
    lines = [
        "| attention | params | GFLOPs | CPU ms (fwd, b1) | val Dice | test Dice (organs in scan) | liver "
        "| spleen | stomach |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["test_dice"]
        lines.append(
            f"| {r['attention']} | {r['params']:,} | {r['flops_g']:.3f} | {r['latency_ms']:.1f} | "
            f"{r['val_dice_mean']:.3f} | {r['test_dice_present_mean']:.3f} | {d.get('liver', 0):.3f} | "
            f"{d.get('spleen', 0):.3f} | {d.get('stomach', 0):.3f} |"
        )
    (args.out / "ja_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
