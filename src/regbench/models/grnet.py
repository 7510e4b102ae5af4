"""GRNet, the adversarial chest X-ray baseline of He et al. 2022 (Table 1, reference [25]).

Luo, Cao, He, Zou and He, "Deformable adversarial registration network with multiple loss constraints",
Computerized Medical Imaging and Graphics 91:101931, 2021. See :class:`GRNet` for what is known and what is
reconstructed.
"""

from __future__ import annotations

from collections.abc import Sequence

from .acregnet import ACRegNet
from .wrappers import PairCritic


class GRNet(ACRegNet):
    """GRNet generator: the AC-RegNet U-Net (:class:`regbench.models.acregnet.ACRegNet`), trained adversarially
    against a pair critic (:class:`GRNetCritic`) together with AC-RegNet's anatomical constraints.

    What is known (sources at hand): the paper's title and venue, and He et al. 2022's description of it --
    Sec. 2: Luo et al. "combined the anatomical segmentations and GAN framework" on top of AC-RegNet's global
    anatomical constraint (their reference [26]); Sec. 4: GRNet was trained with its released code and is
    compared on the AC-RegNet-preprocessed JSRT / MONT / SHEN sets (Table 1: DSC 0.960 / 0.952 / 0.943). The
    CMIG paper itself and its code are not at hand.

    What is reconstructed (ours, stated in ``config/papers/he2022.yaml``):

    * generator = AC-RegNet's U-Net, same widths, dropout, BatchNorm, additive skips, 64x64 training grid
      (this class adds nothing to :class:`ACRegNet`; it exists so that the method has its own name and
      parameter count);
    * losses = AC-RegNet's (global NCC, 5e-5 TV, 1.0 label cross-entropy, 0.1 auto-encoder code distance)
      plus the non-saturating generator loss of a jointly trained critic (``adversarial`` term, weight ours);
    * critic = :class:`GRNetCritic` on ``(fixed, warped)`` image pairs, trained with ``critic_bce`` (the
      fixed image against itself as the aligned pair) at its own Adam learning rate; the critic's
      architecture, learning rate and the adversarial weight are ours.

    Args and forward: as :class:`ACRegNet` (2D only; ``moving``, ``fixed`` ``(B, C, H, W)`` -> ``ddf``
    ``(B, 2, H, W)`` in pixels, ``warped``).
    """


class GRNetCritic(PairCritic):
    """GRNet's discriminator as reconstructed here: a :class:`regbench.models.wrappers.PairCritic` with four
    stride-2 levels (16, 32, 64, 128 filters, LeakyReLU 0.2), global average pooling and a linear logit;
    input ``(B, 2C, H, W)`` = fixed and warped (or fixed and fixed) concatenated, output ``(B, 1)`` logits.
    Luo et al.'s own discriminator is not at hand (see :class:`GRNet`)."""

    def __init__(self, ndim: int, in_channels: int = 2, features: Sequence[int] = (16, 32, 64, 128)):
        super().__init__(ndim, in_channels, tuple(features))
