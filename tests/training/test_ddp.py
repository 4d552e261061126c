"""DDP with torchrun and the gloo backend: 2 processes x batch 1 equal 1 process x batch 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from attnseg.runs import RunDir

pytestmark = pytest.mark.ddp

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


def _run(cmd, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_two_gloo_processes_match_one_process_with_the_global_batch(rgb_dataset, tmp_path):
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "--master_addr=127.0.0.1",
        "-m",
        "attnseg.cli.main",
        "train",
    ]
    _run([*torchrun, "--data", str(rgb_dataset), "--out", str(tmp_path / "ddp"), "--batch-size", "1", *ARGS])
    _run(
        [
            sys.executable,
            "-m",
            "attnseg.cli.main",
            "train",
            "--data",
            str(rgb_dataset),
            "--out",
            str(tmp_path / "single"),
            "--batch-size",
            "2",
            *ARGS,
        ]
    )
    state = RunDir(tmp_path / "ddp").load_state("last")
    assert state["world_size"] == 2 and state["iteration"] == 4
    a = load_file(str(tmp_path / "ddp" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "single" / "checkpoints" / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
