"""Launcher for tests/training/test_ddp.py (not a test module): one torchrun, one gloo process group, every model.

    torchrun --nproc_per_node=2 tests/training/ddp_all_models.py DATA OUT [MODEL ...]

Each process joins the group once, then trains every registered model (or the MODELs given) for ``ITERATIONS``
steps with batch 1 per process into ``OUT/<model>/`` through :func:`attnseg.training.trainer.train`, whose
``init_distributed()`` finds the group already initialised and leaves it alone. After each model, rank 0 also writes
what rank 1 ended with (``OUT/<model>.rank1.safetensors``), so the test can check that both ranks agree.

:func:`config_for` and :func:`without_dropout` are shared with the test's single-process reference runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnseg.bench.compile_check import disable_dropout

ITERATIONS = 2


def config_for(name: str, data: str | Path, out: str | Path, batch_size: int) -> Any:
    """The run of ``name`` at its test configuration on the CT dataset ``data`` (2D models train slice-wise)."""
    from attnseg.config import TrainConfig
    from attnseg.models import model_info

    info = model_info(name)
    return TrainConfig(
        model=name,
        # JSON round trip: tuples in test_kwargs become lists, as --model-kwargs gives them
        model_kwargs=json.loads(json.dumps(dict(info.test_kwargs))),
        data=str(data),
        out=str(out),
        fold="fold0",
        iterations=ITERATIONS,
        batch_size=batch_size,
        input_size=list(info.test_input_size),
        # plain cross-entropy: the mean over the batch's voxels is the mean of the per-sample means, so averaging
        # the gradients of 2 x batch 1 equals the gradient of 1 x batch 2 (dice_ce's batch Dice pools the batch)
        loss="ce",
        geometry="resize",
        num_workers=0,
        val_every=ITERATIONS,  # validation (sharded over the ranks) after the last step
        lr=0.01,
        device="cpu",
        seed=3,
        log_every=1,
    )


def without_dropout(model: nn.Module) -> nn.Module:
    """Dropout and drop-path off (p = 0) in every module that has them.

    Dropout draws its masks from each process's own RNG stream (the trainer seeds rank r with seed + r), and some
    masks are shared by the whole batch (MSA2Net's MaxViT relative-position MLP drops entries of a table every
    sample uses), so no single-process run can draw the masks two ranks draw. Everything else runs as configured.
    """
    disable_dropout(model)
    return model


def in_float64(model: nn.Module) -> nn.Module:
    """The model in float64, taking and returning the trainer's float32 tensors.

    Batch 2 and batch 1 run different float32 kernels (other blockings and summation orders); BatchNorm over the 2x2
    maps of a batch-1 sample divides by standard deviations near sqrt(eps) and magnifies those last-bit differences to
    1e-2 (DenseUNet's test configuration). In float64 they stay far below the test's tolerance, so a mismatch is a
    difference of semantics. DDP itself does not depend on the dtype (the U-Net tests cover float32).
    """
    model.double()
    model.register_forward_pre_hook(lambda _, args: tuple(a.double() if a.is_floating_point() else a for a in args))
    model.register_forward_hook(lambda _, args, out: out.float())
    return model


def main(argv: list[str]) -> int:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from attnseg.models import list_models
    from attnseg.training import distributed as ddp
    from attnseg.training.trainer import Trainer, train

    data, out, names = argv[0], Path(argv[1]), argv[2:] or list_models()
    dist.init_process_group(backend="gloo")
    group = dist.group.WORLD
    # the trainer's init_distributed() must join nothing when the group exists (it is called once per model)
    assert ddp.init_distributed(torch.device("cpu")) is True and dist.group.WORLD is group
    assert ddp.world_size() == 2, ddp.world_size()

    built: list[nn.Module] = []
    build_model = Trainer.build_model

    def build(self: Trainer, in_channels: int, num_classes: int) -> nn.Module:
        built.append(in_float64(without_dropout(build_model(self, in_channels, num_classes))))
        return built[-1]

    Trainer.build_model = build  # type: ignore[method-assign]
    try:
        for name in names:
            if ddp.is_main():
                print(f"ddp: training {name}", flush=True)
            train(config_for(name, data, out / name, batch_size=1), progress=False)
            state = {k: v.detach().contiguous().clone() for k, v in built[-1].state_dict().items()}
            gathered = ddp.gather_objects(state)
            if ddp.is_main():
                save_file(gathered[1], str(out / f"{name}.rank1.safetensors"))
            dist.barrier()
    finally:
        Trainer.build_model = build_model  # type: ignore[method-assign]
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
