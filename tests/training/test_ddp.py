"""DDP with torchrun and the gloo backend: N processes x batch B equal 1 process x batch N*B.

- U-Net on the RGB dataset: 2 processes x batch 1 (one launcher, and two launchers as two "nodes" of a c10d
  rendezvous on localhost) against 1 process x batch 2; resuming that run with another number of processes is refused.
- Every registered model (``list_models()``, so a model added later is covered) on the CT dataset: one torchrun runs
  ``ddp_all_models.py``, which trains them all in one process group; the single-process references run here, with
  BatchNorm made to normalise as each DDP rank does (:func:`ghost_batch_norm`).

Weights are compared with ``rtol=1e-4, atol=1e-5`` in float32 (U-Net: the summation orders of batch 2 and of the
gloo all-reduce differ) and ``rtol=1e-7, atol=1e-9`` in float64 (every model, see ``in_float64`` in the launcher);
integer buffers (BatchNorm's ``num_batches_tracked``) exactly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from attnseg.runs import RunDir

pytestmark = pytest.mark.ddp

TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # float32
TOLERANCE_FLOAT64 = dict(rtol=1e-7, atol=1e-9)  # measured: differences below 1e-13
LAUNCHER = Path(__file__).with_name("ddp_all_models.py")

ARGS = [
    "--model",
    "unet",
    "--model-kwargs",
    '{"width": 4}',
    "--iterations",
    "4",
    "--input-size",
    "32",
    "32",
    "--loss",
    "bce_dice",
    "--geometry",
    "resize",
    "--num-workers",
    "0",
    "--val-every",
    "2",
    "--lr",
    "0.01",
    "--device",
    "cpu",
    "--seed",
    "3",
    "-q",
]
TRAIN = [sys.executable, "-m", "attnseg.cli.main", "train"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _free_port() -> int:
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(nproc: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={_free_port()}",
        "--master_addr=127.0.0.1",
    ]


def _assert_same_weights(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str, tolerance: dict[str, float] = TOLERANCE
) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tolerance, msg=lambda m, k=k: f"{what}: {k}: {m}")


def _val_dice(run: Path) -> dict[int, float]:
    """``val_dice/mean`` of each validated iteration in ``run``'s log.csv."""
    rows = RunDir(run).read_log()
    return {int(r["iteration"]): float(r["val_dice/mean"]) for r in rows if r.get("val_dice/mean")}


@pytest.fixture(scope="module")
def rgb_runs(rgb_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """U-Net runs on the RGB dataset: 2 processes x batch 1 (torchrun) and 1 process x batch 2."""
    root = tmp_path_factory.mktemp("ddp_rgb")
    ddp_cmd = [*_torchrun(), "-m", "attnseg.cli.main", "train", "--data", str(rgb_dataset), "--out", str(root / "ddp")]
    _run([*ddp_cmd, "--batch-size", "1", *ARGS])
    _run([*TRAIN, "--data", str(rgb_dataset), "--out", str(root / "single"), "--batch-size", "2", *ARGS])
    return root / "ddp", root / "single"


def test_two_gloo_processes_match_one_process_with_the_global_batch(rgb_runs):
    ddp_run, single = rgb_runs
    state = RunDir(ddp_run).load_state("last")
    assert state["world_size"] == 2 and state["iteration"] == 4
    a = load_file(str(ddp_run / "checkpoints" / "last.safetensors"))
    b = load_file(str(single / "checkpoints" / "last.safetensors"))
    _assert_same_weights(a, b, "2 x 1 vs 1 x 2")


# ------------------------------------------------------------------------------------------ resume, world size
def _snapshot(run: Path) -> dict[str, tuple[str, int]]:
    """Every file of ``run``: content hash and modification time."""
    return {
        str(p.relative_to(run)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def test_resume_with_another_number_of_processes_is_refused_before_writing(rgb_runs, tmp_path):
    from attnseg.cli.main import app

    run = tmp_path / "ddp"
    shutil.copytree(rgb_runs[0], run)
    before = _snapshot(run)
    # one process resuming a 2-process run (the command keeps the run's config.yaml: batch size 1)
    result = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--iterations", "6", "-q"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())  # the console wraps long lines
    assert "trained by 2 process(es) and this launch has 1" in message, message
    assert "global batch (batch size x processes) would change from 1 x 2 = 2 to 1 x 1 = 1" in message, message
    assert "Traceback" not in result.output
    assert _snapshot(run) == before


# ------------------------------------------------------------------------------------------------- multi-node
def test_two_nodes_on_localhost_match_one_process_and_only_rank_0_writes(rgb_runs, rgb_dataset, tmp_path):
    """Two torchrun launchers, one process each, joined by a c10d rendezvous: world size 2 over two "nodes".

    Each node runs in its own working directory with the same relative ``--out``, as two machines would: the run
    files must appear under exactly one of them (rank 0's; the c10d rendezvous, not --node-rank, assigns ranks).
    """
    single = rgb_runs[1]
    splits = json.loads((rgb_dataset / "splits.json").read_text())  # written by the reference runs
    assert len(splits["fold0"]["val"]) >= 2  # validation is sharded: each rank validates a case
    port = _free_port()
    nodes = []
    for node_rank in (0, 1):
        cwd = tmp_path / f"node{node_rank}"
        cwd.mkdir()
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=attnseg-two-nodes",
            # node 0 hosts the rendezvous store (both would match 127.0.0.1 otherwise)
            f"--rdzv-conf=is_host={int(node_rank == 0)}",
            "-m",
            "attnseg.cli.main",
            "train",
            "--data",
            str(rgb_dataset),
            "--out",
            "run",
            "--batch-size",
            "1",
            *ARGS,
        ]
        nodes.append(
            subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = []
    try:
        for proc in nodes:
            outputs.append(proc.communicate(timeout=600)[0])
    finally:
        for proc in nodes:
            if proc.poll() is None:
                proc.kill()
    for node_rank, (proc, output) in enumerate(zip(nodes, outputs)):
        assert proc.returncode == 0, f"node {node_rank}:\n{output}"

    written = [tmp_path / f"node{r}" / "run" for r in (0, 1) if (tmp_path / f"node{r}" / "run").exists()]
    assert len(written) == 1, f"run files under {written}: only rank 0 writes"
    run = written[0]
    assert (run / "log.csv").is_file() and RunDir(run).has_checkpoint("last") and RunDir(run).has_checkpoint("best")
    state = RunDir(run).load_state("last")
    assert state["world_size"] == 2 and state["iteration"] == 4
    a = load_file(str(run / "checkpoints" / "last.safetensors"))
    b = load_file(str(single / "checkpoints" / "last.safetensors"))
    _assert_same_weights(a, b, "2 nodes x 1 vs 1 x 2")
    # the gathered validation covers every case once: the same mean Dice as the single process's over all cases
    two_nodes, reference = _val_dice(run), _val_dice(single)
    assert sorted(two_nodes) == sorted(reference) == [2, 4]
    for it in reference:
        assert two_nodes[it] == pytest.approx(reference[it], abs=1e-4), it


# ----------------------------------------------------------------------------------------------- CUDA devices
def test_each_process_of_a_multi_gpu_launch_takes_the_gpu_of_its_local_rank(monkeypatch):
    """Without GPUs here: the device logic under torchrun's environment, with CUDA's answers stubbed."""
    from attnseg.config import ConfigError
    from attnseg.training import distributed as ddp

    current = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(ddp.dist, "is_initialized", lambda: True)  # no group is joined here
    cuda = torch.device("cuda")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert ddp.process_device(cuda) == cuda  # no torchrun: as resolved
    for key, value in {"WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    assert ddp.process_device(cuda) == torch.device("cuda", 1)
    assert ddp.process_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="each takes the GPU of its local rank"):
        ddp.process_device(torch.device("cuda", 0))  # both processes of this node on one GPU
    ddp.init_distributed(torch.device("cuda", 1))
    assert current == [torch.device("cuda", 1)]
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="has 2 visible GPU"):
        ddp.process_device(cuda)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process per node may name its GPU
    assert ddp.process_device(torch.device("cuda", 1)) == torch.device("cuda", 1)


# ------------------------------------------------------------------------------------------------- all models
def _launcher():
    """``ddp_all_models.py`` as a module (its run configuration and dropout switch are shared with the references)."""
    location = importlib.util.spec_from_file_location("ddp_all_models", LAUNCHER)
    module = importlib.util.module_from_spec(location)
    location.loader.exec_module(module)
    return module


class _GhostBatchNorm:
    """Put in front of a ``_BatchNorm`` class: in training, each sample of the model's batch is normalised with its
    own statistics, as each DDP rank (batch 1) normalises its sample; running statistics follow sample 0 only.

    Why sample 0: DDP's default ``broadcast_buffers=True`` copies rank 0's buffers to every rank before each forward
    (``DistributedDataParallel._pre_forward`` -> ``_sync_buffers``, authoritative rank 0), so the statistics that last
    are rank 0's, updated by rank 0's sample alone, and rank 0's sample of step ``it`` (global id ``2 it``) is sample
    0 of the single process's batch. Models that fold more dimensions into the batch (the slab models' ``[B*K, ...]``,
    slices of a sample adjacent) are split into the model's B equal chunks, one per sample.
    """

    _ghost_samples: list[int]  # [B of the model's current input], shared by the model's BatchNorms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        samples = self._ghost_samples[0]
        if not self.training or samples == 1:
            return super().forward(x)
        if x.shape[0] % samples:
            raise AssertionError(f"{type(self).__name__}: batch {x.shape[0]} is not a multiple of {samples} samples")
        chunks = x.chunk(samples)
        out = [super().forward(chunks[0])]
        kept = {k: v for k, v in self._buffers.items() if v is not None}
        try:
            for chunk in chunks[1:]:  # the other ranks' updates: made on copies, dropped as DDP's broadcast drops them
                for k, v in kept.items():
                    setattr(self, k, v.clone())
                out.append(super().forward(chunk))
        finally:
            for k, v in kept.items():
                setattr(self, k, v)
        return torch.cat(out)


_GHOSTS: dict[type, type] = {}


def ghost_batch_norm(model: nn.Module) -> nn.Module:
    """Every ``_BatchNorm`` of ``model`` (timm's BatchNormAct2d too) becomes a ghost of itself (same parameters,
    buffers and state-dict keys)."""
    samples = [1]
    model.register_forward_pre_hook(lambda _, args: samples.__setitem__(0, args[0].shape[0]))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            cls = type(module)
            if cls not in _GHOSTS:
                _GHOSTS[cls] = type(f"Ghost{cls.__name__}", (_GhostBatchNorm, cls), {})
            module.__class__ = _GHOSTS[cls]
            module._ghost_samples = samples
    return model


@pytest.fixture
def ct_two_val_cases(ct_dataset, tmp_path) -> Path:
    """The CT dataset with a fold of 2 validation cases, so that validation under DDP runs on both ranks (its own
    folds have 1 validation case each: 3 training cases)."""
    root = tmp_path / ct_dataset.name
    shutil.copytree(ct_dataset, root)
    splits = json.loads((root / "splits.json").read_text()) if (root / "splits.json").exists() else {}
    train_ids = sorted(p.name.removesuffix(".nii.gz") for p in (root / "labelsTr").glob("*.nii.gz"))
    splits["fold0"] = {"train": train_ids[:1], "val": train_ids[1:3]}
    splits.setdefault("test", sorted(p.name.removesuffix(".nii.gz") for p in (root / "labelsTs").glob("*.nii.gz")))
    (root / "splits.json").write_text(json.dumps(splits))
    return root


@pytest.mark.slow
def test_every_registered_model_under_ddp_matches_one_process_with_the_global_batch(
    ct_two_val_cases, tmp_path, monkeypatch
):
    """2 gloo processes x batch 1 vs 1 process x batch 2, 2 steps, for every name in ``list_models()``.

    Same on both sides: each model's ``test_kwargs`` at its ``test_input_size``, the CT dataset (2D models train
    slice-wise), plain cross-entropy (``dice_ce``'s batch Dice pools the batch), validation after step 2, dropout off
    (``without_dropout``: masks come from each rank's RNG stream) and float64 (``in_float64``: batch-1 BatchNorm on
    2x2 maps magnifies float32 rounding to 1e-2). The reference's BatchNorms normalise per sample
    (``ghost_batch_norm``). Checked per model: rank 0's checkpoint equals the reference's weights and buffers, rank 1
    ends with exactly rank 0's weights and buffers (this fails without the buffer broadcast before validation), and
    the validation Dice (cases sharded over the ranks, gathered) equals the reference's. No other op of a registered
    model couples the samples of a batch (checked in float64 when this test was written: the ghost-BN outputs of a
    batch of 2 equal those of each sample alone, slab models included).
    """
    from attnseg.models import list_models
    from attnseg.training.trainer import Trainer, train

    launcher = _launcher()
    names = list_models()
    data, ddp_out, single_out = ct_two_val_cases, tmp_path / "ddp", tmp_path / "single"
    _run([*_torchrun(), str(LAUNCHER), str(data), str(ddp_out), *names])

    build_model = Trainer.build_model
    monkeypatch.setattr(
        Trainer,
        "build_model",
        lambda self, *a: ghost_batch_norm(launcher.in_float64(launcher.without_dropout(build_model(self, *a)))),
    )
    problems = []
    for name in names:
        train(launcher.config_for(name, data, single_out / name, batch_size=2), progress=False)
        run = ddp_out / name
        state = RunDir(run).load_state("last")
        assert state["world_size"] == 2 and state["iteration"] == launcher.ITERATIONS, name
        rank0 = load_file(str(run / "checkpoints" / "last.safetensors"))
        rank1 = load_file(str(ddp_out / f"{name}.rank1.safetensors"))
        reference = load_file(str(single_out / name / "checkpoints" / "last.safetensors"))
        try:
            assert rank0.keys() == rank1.keys()
            for k in rank0:  # the same all-reduced gradients and optimiser steps; buffers broadcast before validation
                assert torch.equal(rank0[k], rank1[k]), f"{name}: ranks 0 and 1 differ in {k}"
            _assert_same_weights(rank0, reference, name, TOLERANCE_FLOAT64)
            dice, expected = _val_dice(run), _val_dice(single_out / name)
            assert list(dice) == list(expected) == [launcher.ITERATIONS], (name, dice, expected)
            assert dice[launcher.ITERATIONS] == pytest.approx(expected[launcher.ITERATIONS], abs=1e-6), name
        except AssertionError as exc:
            problems.append(str(exc))
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
