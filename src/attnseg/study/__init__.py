"""Cross-validated comparison of models in one command (``attnseg study run``).

:mod:`attnseg.study.config` reads the study file, :mod:`attnseg.study.runner` trains, predicts and evaluates every
(model entry, fold, seed) job into a study directory.
"""

from __future__ import annotations

from attnseg.study.config import ModelEntry, StudyConfig, StudyError, load_study, parse_study
from attnseg.study.runner import Job, JobResult, run_study

__all__ = ["Job", "JobResult", "ModelEntry", "StudyConfig", "StudyError", "load_study", "parse_study", "run_study"]
