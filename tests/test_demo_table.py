"""The demo's result table: organs the held-out scan does not contain are reported as absent, not scored."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from attnseg.demo import _organ_table
from attnseg.evaluation.evaluate import evaluate_arrays


def test_absent_organs_are_reported_as_absent_not_as_dice():
    gt = np.zeros((20, 20), np.uint8)
    gt[2:10, 2:10] = 1  # liver present
    pred = gt.copy()
    pred[12:14, 12:14] = 2  # a false positive of an organ the scan does not contain
    summary = evaluate_arrays([("scan", pred, gt, (1.0, 1.0))], labels={"liver": 1, "spleen": 2, "aorta": 3})
    assert summary["per_class"]["spleen"]["dice"] == 0.0 and summary["per_class"]["aorta"]["dice"] == 1.0
    out = io.StringIO()
    Console(file=out, width=120).print(_organ_table(summary))
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in out.getvalue().splitlines()
        if line.count("│") == 6
    }
    assert rows["liver"] == ["yes", "1.000", "0.0", ""]
    assert rows["spleen"] == ["no", "–", "–", "absent; false positive"]
    assert rows["aorta"] == ["no", "–", "–", "absent; nothing predicted"]
