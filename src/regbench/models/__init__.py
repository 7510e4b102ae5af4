"""Registry of learned registration models, keyed by the ``model`` name used in configs."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .voxelmorph import VoxelMorph

MODELS: dict[str, Callable[..., nn.Module]] = {
    "voxelmorph": VoxelMorph,
}


def build_model(name: str, ndim: int, **params) -> nn.Module:
    """Instantiate a registered model.

    Raises:
        KeyError: ``name`` is not registered (message lists the known models).
        TypeError: ``params`` holds an argument the model does not take.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    return MODELS[name](ndim=ndim, **params)
