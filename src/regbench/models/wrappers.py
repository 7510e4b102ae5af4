"""Models built from other registered models: forward + backward registration, adversarial critics.

* :class:`Bidirectional` runs one registration network both ways and returns the backward field beside the
  forward one (``ddf_inv``, ``warped_inv``), for cycle- and inverse-consistency terms
  (:mod:`regbench.terms`; forward and backward DDFs as in MMRegNet, Ding et al.).
* :class:`PairCritic` scores whether a pair of images is aligned (adversarial registration; Fan et al.,
  MedIA 2019; Duan et al., BSPC 2019). Critics are not registration models: they live in :data:`CRITICS`
  and are trained as a second player of the training loop (:mod:`regbench.engine`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from .blocks import conv_nd
from .multifc import MultiFCCritic


class Bidirectional(nn.Module):
    """One registration network applied as ``(moving -> fixed)`` and ``(fixed -> moving)``.

    Args:
        ndim: 2 or 3.
        base: registered model name (``regbench.models.MODELS``), e.g. ``voxelmorph``.
        base_params: its parameters.

    Forward ``moving``, ``fixed``: ``(B, C, *spatial)``. Returns the base model's outputs for the forward
    direction plus ``ddf_inv`` ``(B, ndim, *spatial)`` (voxels, on the moving grid: it pulls the fixed image
    onto the moving one) and ``warped_inv`` (the fixed image warped onto the moving grid).
    """

    def __init__(self, ndim: int, base: str = "voxelmorph", base_params: dict[str, Any] | None = None):
        super().__init__()
        from . import build_model

        if base == "bidirectional":
            raise ValueError("Bidirectional cannot wrap itself")
        self.net = build_model(base, ndim, **(base_params or {}))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        out = dict(self.net(moving, fixed))
        back = self.net(fixed, moving)
        out["ddf_inv"], out["warped_inv"] = back["ddf"], back["warped"]
        return out


class PairCritic(nn.Module):
    """A small convolutional critic of image pairs: ``(B, 2C, *spatial) -> (B, 1)`` logits.

    Stride-2 3x3(x3) convolutions with ``features`` filters, each followed by LeakyReLU(0.2), global average
    pooling and a linear layer. Input: the fixed image and a second image concatenated along channels.

    Args:
        ndim: 2 or 3.
        in_channels: channels of the concatenated pair (2 for single-channel images).
        features: filters per level.
    """

    def __init__(self, ndim: int, in_channels: int = 2, features: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        chans = [in_channels, *features]
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [conv_nd(ndim)(a, b, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], 1)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pair).flatten(2).mean(-1))


#: critic name -> factory ``(ndim, **params)``
CRITICS: dict[str, Callable[..., nn.Module]] = {"pair_critic": PairCritic, "multifc_critic": MultiFCCritic}


def _grnet_critic(ndim: int, **params) -> nn.Module:
    from .grnet import GRNetCritic  # grnet imports this module

    return GRNetCritic(ndim, **params)


CRITICS["grnet_critic"] = _grnet_critic


def build_critic(name: str, ndim: int, **params) -> nn.Module:
    """Instantiate a registered critic.

    Raises:
        KeyError: unknown name (lists the known ones).
        TypeError: a parameter the critic does not take.
    """
    if name not in CRITICS:
        raise KeyError(f"unknown critic {name!r}; registered critics: {sorted(CRITICS)}")
    return CRITICS[name](ndim=ndim, **params)
