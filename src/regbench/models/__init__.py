"""Registry of learned registration models, keyed by the ``model`` name used in configs."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .acregnet import ACRegNet, RCINet
from .cai2023 import Cai2023Cascade
from .ding2021 import MMRegNet
from .faim import FAIM
from .grnet import GRNet
from .he2022 import He2022RegNet
from .huang2021 import Huang2021Net, Huang2021Siamese
from .multifc import MultiFCNet
from .symnet import SYMNet
from .voxelmorph import VoxelMorph
from .wrappers import Bidirectional, build_critic
from .zhu2021 import Zhu2021Net

#: Pairwise registration networks called as ``model(moving, fixed) -> {"ddf", "warped", ...}``. The He et al.
#: 2022 segmenter and auto-encoder (``he2022.AttentionSegUNet``, ``he2022.AnatomicalAutoEncoder``) are
#: trained separately and are not registration models.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "voxelmorph": VoxelMorph,
    "he2022": He2022RegNet,
    "acregnet": ACRegNet,
    "rcinet": RCINet,
    "grnet": GRNet,
    "bidirectional": Bidirectional,
    "zhu2021": Zhu2021Net,
    "symnet": SYMNet,
    "faim": FAIM,
    "multifc": MultiFCNet,
    "cai2023": Cai2023Cascade,
    "mmregnet": MMRegNet,
    "huang2021": Huang2021Net,
    "huang2021_siamese": Huang2021Siamese,
}


def build_model(name: str, ndim: int, **params) -> nn.Module:
    """Instantiate a registered model (critics: :func:`build_critic`).

    Raises:
        KeyError: ``name`` is not registered (message lists the known models).
        TypeError: ``params`` holds an argument the model does not take.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    return MODELS[name](ndim=ndim, **params)
