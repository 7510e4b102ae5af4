"""He et al. 2022 networks (attention U-Net, label auto-encoder, multi-scale DFSA registration network) and
their losses (contour, SSIM, label cross-entropy, code distance)."""

import pytest
import torch

from regbench import losses, spatial
from regbench.models.he2022 import (
    DFSA,
    AnatomicalAutoEncoder,
    AttentionSegUNet,
    He2022RegNet,
    swap_label_noise,
)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def disc(size=32, centre=(16, 16), radius=8.0):
    g = spatial.identity_grid((size, size))
    return (((g[0] - centre[0]) ** 2 + (g[1] - centre[1]) ** 2) < radius**2).float()[None, None]


def assert_all_grads(model):
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


# --- attention segmentation U-Net (Sec. 3.2) ---

def test_segmenter_parameter_count_matches_the_paper():
    # Paper: "about 1.9 million", reduced from "about 7.7 million"; allow 5 %.
    assert abs(n_params(AttentionSegUNet()) - 1.9e6) < 0.05 * 1.9e6
    assert abs(n_params(AttentionSegUNet(base_channels=32)) - 7.7e6) < 0.05 * 7.7e6


@pytest.mark.parametrize("size", [64, 256])
def test_segmenter_shapes_and_cleaning(size):
    torch.manual_seed(0)
    seg = AttentionSegUNet().eval()
    x = torch.rand(1, 1, size, size)
    assert seg(x).shape == (1, 2, size, size)
    mask = seg.attention_mask(x)
    assert mask.shape == (1, 1, size, size) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(seg.clean(x), x * mask)
    with pytest.raises(ValueError, match="divisible by 16"):
        seg(torch.rand(1, 1, 40, 40))


def test_segmenter_gradients_reach_all_parameters():
    torch.manual_seed(0)
    seg = AttentionSegUNet(batch_norm=True)
    target = disc(32, (16, 16), 8).long()
    losses.CEContourLoss(weight=1.75)(seg(torch.rand(2, 1, 32, 32)), target.expand(2, -1, -1, -1)).backward()
    assert_all_grads(seg)


# --- label denoising auto-encoder (Sec. 3.3) ---

def test_autoencoder_shapes_code_loss_and_gradients():
    torch.manual_seed(0)
    ae = AnatomicalAutoEncoder(n_classes=2, n_codes=32)
    onehot = losses.one_hot(disc(64, (32, 32), 14).long(), [0, 1]).expand(2, -1, -1, -1)
    assert ae.encode(onehot).shape == (2, 32)
    logits = ae(onehot)
    assert logits.shape == (2, 2, 64, 64)
    losses.CEContourLoss(weight=2.0)(logits, onehot.argmax(1, keepdim=True)).backward()
    assert_all_grads(ae)
    # An untrained AC-RegNet encoder in eval mode (default BatchNorm running statistics) often has a dead
    # one-channel ReLU bottleneck and a constant code, so the distance is checked with batch statistics.
    assert losses.anatomical_code_loss(ae, onehot, onehot) < 1e-10
    shifted = onehot.roll(6, dims=-1).requires_grad_(True)
    dist = losses.anatomical_code_loss(ae, shifted, onehot)
    assert dist > 0
    dist.backward()
    assert shifted.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one-hot labels"):
        ae.encode(torch.rand(1, 2, 32, 32))
    assert AnatomicalAutoEncoder(input_size=(32, 48)).eval()(torch.rand(1, 2, 32, 48)).shape == (1, 2, 32, 48)


def test_swap_label_noise_only_swaps_horizontal_pairs():
    lab = torch.arange(2 * 8 * 8).view(2, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    noisy = swap_label_noise(lab, prob=0.5, generator=g)
    assert not torch.equal(noisy, lab)
    assert torch.equal(noisy.view(2, 1, 8, 4, 2).sort(-1).values, lab.view(2, 1, 8, 4, 2))
    assert torch.equal(swap_label_noise(lab, prob=0.0), lab)


# --- registration network (Sec. 3.4) ---

@pytest.mark.parametrize("n_scales", [1, 2, 3, 4])
def test_regnet_scales_shapes_and_identity_start(n_scales):
    torch.manual_seed(0)
    net = He2022RegNet(n_scales=n_scales)
    m, f = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    out = net(m, f)
    assert out["ddf"].shape == (2, 2, 64, 64) and out["warped"].shape == m.shape
    assert [t.shape[-1] for t in out["fields"]] == [64 // 2**k for k in range(n_scales)]
    assert [t.shape[-1] for t in out["fused"]] == [64 // 2**k for k in range(n_scales)]
    assert len(out["weights"]) == n_scales - 1
    assert out["ddf"].abs().max() < 1e-2  # near-zero displacement heads
    assert torch.allclose(out["warped"], m, atol=1e-3)
    assert len(net.heads) == n_scales and len(net.dfsa) == n_scales - 1


@pytest.mark.parametrize("kwargs", [{}, {"dense": True, "dfsa_source": "both"}, {"pyramid_input": False,
                                                                                 "dfsa_source": "fine"}])
def test_regnet_gradients_reach_all_parameters(kwargs):
    torch.manual_seed(0)
    net = He2022RegNet(**kwargs)
    m, f = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out = net(m, f)
    (losses.GlobalNCC()(f, out["warped"]) + losses.SSIMLoss()(f, out["warped"])
     + (out["ddf"] * torch.randn_like(out["ddf"])).sum()).backward()
    assert_all_grads(net)


def test_regnet_fusion_follows_eq5():
    """DF_k^a = W_k * up(DF_{k+1}^a) + DF_k^c, with W_k in (0, 1). Eq. 5-6 weight the finer field by 1, so
    the two weights do not sum to one; what the equations fix is this form, checked exactly here."""
    torch.manual_seed(0)
    net = He2022RegNet(n_scales=4)
    for head in net.heads:  # larger fields so the check is not trivially about zeros
        torch.nn.init.normal_(head.weight, std=0.1)
    out = net(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))
    fields, fused, weights = out["fields"], out["fused"], out["weights"]
    assert torch.equal(fused[3], fields[3])
    for k in range(3):
        up = spatial.resize_field(fused[k + 1], fields[k].shape[2:])
        assert torch.allclose(fused[k], weights[k] * up + fields[k], atol=1e-6)
        assert weights[k].shape == fields[k].shape
        assert (weights[k] > 0).all() and (weights[k] < 1).all()
    assert torch.equal(out["ddf"], fused[0])


def test_dfsa_treats_axes_independently():
    torch.manual_seed(0)
    dfsa = DFSA()
    coarse, fine = torch.randn(1, 2, 16, 16), torch.randn(1, 2, 16, 16)
    _, w = dfsa(coarse, fine)
    coarse2 = coarse.clone()
    coarse2[:, 1] = torch.randn(16, 16)  # changing the y channel must leave the x weights unchanged
    _, w2 = dfsa(coarse2, fine)
    assert torch.equal(w[:, 0], w2[:, 0]) and not torch.equal(w[:, 1], w2[:, 1])


def test_regnet_sizes_work_size_and_errors():
    torch.manual_seed(0)
    net = He2022RegNet()
    assert net(torch.rand(1, 1, 256, 256), torch.rand(1, 1, 256, 256))["ddf"].shape == (1, 2, 256, 256)
    small = He2022RegNet(work_size=64)
    out = small(torch.rand(1, 1, 256, 256), torch.rand(1, 1, 256, 256))
    assert out["ddf"].shape == (1, 2, 256, 256) and out["fields"][0].shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 60, 64), torch.rand(1, 1, 60, 64))
    with pytest.raises(ValueError, match="n_scales"):
        He2022RegNet(n_scales=5)
    with pytest.raises(ValueError, match="2D only"):
        He2022RegNet(ndim=3)


# --- losses (Eq. 2-3, 9-10, 12) ---

def test_contour_loss_zero_for_identical_positive_otherwise():
    a = losses.one_hot(disc().long(), [0, 1])
    b = losses.one_hot(disc(centre=(17, 15)).long(), [0, 1])
    for red in ("norm", "mse"):
        for nb in (4, 8):
            ct = losses.ContourLoss(neighbours=nb, reduction=red)
            assert ct(a, a) == 0
            assert ct(a, b) > 0
    # a constant offset of a filled region has no contour: only edges count
    assert losses.laplacian(torch.ones(1, 1, 8, 8)).abs().max() == 0
    logits = (4 * a - 2).requires_grad_(True)
    loss = losses.ContourLoss(from_logits=True)(logits, b)
    loss.backward()
    assert loss > 0 and logits.grad.abs().sum() > 0


def test_ssim_loss_zero_for_identical_and_grows_with_noise():
    torch.manual_seed(0)
    img = spatial.resize_image(torch.rand(1, 1, 8, 8), (48, 48))
    ssim = losses.SSIMLoss()
    assert ssim(img, img).abs() < 1e-5
    vals = [ssim(img, img + s * torch.randn_like(img)).item() for s in (0.02, 0.1, 0.3)]
    assert 0 < vals[0] < vals[1] < vals[2]
    box = losses.SSIMLoss(kernel="uniform", window=7)
    assert box(img, img).abs() < 1e-5 and box(img, img + 0.1 * torch.randn_like(img)) > 0


def test_label_cross_entropy():
    a = losses.one_hot(disc().long(), [0, 1])
    b = losses.one_hot(disc(centre=(20, 12)).long(), [0, 1])
    ce = losses.LabelCrossEntropy()
    assert ce(a, a) < 1e-6 and ce(a, b) > ce(a, 0.5 * (a + b)) > 0
    assert losses.LabelCrossEntropy(as_logits=True)(a, a) > 0  # AC-RegNet code variant: never zero
