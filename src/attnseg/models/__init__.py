"""Architectures, one file per paper, registered by name on import.

Finding a module of a paper: ``malunet.py`` (MALUNet: DGA, IEA, CAB, SAB), ``mdsa_unet.py`` (MDSA-UNet: MDSA, EDM,
EUF), ``msa2net.py`` (MSA2Net: MASAG, decoder stages), ``salstm.py`` (SALSTM/LSTMSA heads), ``mtunet.py`` (MT-UNet,
the SALSTM release's backbone), ``denseunet.py`` + ``joint_attention.py`` (Joint Attention DenseUNet), ``unet.py``
(MONAI baselines), ``nnunet.py`` (nnU-Net's PlainConvUNet and ResEnc M, planned for the input size). Blocks
shared by several of them (conv-BN-ReLU, CBAM channel pooling, input-size checks, fan-out init) live in
:mod:`attnseg.layers`.
"""

from __future__ import annotations

# One import per model file: importing registers its names (and its official-weights loader).
from attnseg.models import (
    denseunet,  # noqa: F401
    malunet,  # noqa: F401
    mdsa_unet,  # noqa: F401
    msa2net,  # noqa: F401
    mtunet,  # noqa: F401
    nnunet,  # noqa: F401
    salstm,  # noqa: F401
    unet,  # noqa: F401
)
from attnseg.models.official import from_official, list_official_classes
from attnseg.models.registry import create_model, list_models, model_info

__all__ = ["create_model", "list_models", "model_info", "from_official", "list_official_classes"]
