"""AC-RegNet (Mansilla et al. 2020) and the recursive cascaded network (Zhao et al. 2019) baselines."""

import itertools

import pytest
import torch
from torch import nn

from regbench import spatial
from regbench.models import MODELS, build_model
from regbench.models.acregnet import ACRegNet, ACRegUNet, RCINet


def assert_all_grads(model):
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


def blob(size=64, centre=(32.0, 32.0), sigma=6.0):
    g = spatial.identity_grid((size, size))
    return torch.exp(-((g[0] - centre[0]) ** 2 + (g[1] - centre[1]) ** 2) / (2 * sigma**2))[None, None]


class ConstantField(nn.Module):
    """Stands in for a cascade: returns a fixed field (callable of the grid) and records its inputs."""

    def __init__(self, field_fn):
        super().__init__()
        self.field_fn = field_fn
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        g = spatial.identity_grid(x.shape[2:], dtype=x.dtype)
        return self.field_fn(g).expand(x.shape[0], -1, -1, -1).clone()


def shift(axis0=0.0, axis1=0.0):
    def fn(g):
        out = torch.zeros_like(g)
        out[0], out[1] = axis0, axis1
        return out[None]
    return fn


def test_registry_and_builders():
    assert MODELS["acregnet"] is ACRegNet and MODELS["rcinet"] is RCINet
    assert isinstance(build_model("acregnet", 2, dropout=0.2, batch_norm=False), ACRegNet)
    net = build_model("rcinet", 2, n_cascades=2, enc_channels=(8, 16, 32))
    assert len(net.cascades) == 2 and all(isinstance(c, ACRegUNet) for c in net.cascades)
    # separate (not shared) weights per cascade
    assert net.cascades[0].head.weight.data_ptr() != net.cascades[1].head.weight.data_ptr()


@pytest.mark.parametrize("cls", [ACRegNet, RCINet])
def test_shapes_identity_start_and_work_size(cls):
    torch.manual_seed(0)
    net = cls()
    m, f = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    out = net(m, f)
    assert out["ddf"].shape == (2, 2, 64, 64) and out["warped"].shape == m.shape
    assert out["ddf"].abs().max() < 1e-2  # output conv initialised at N(0, 1e-5): identity start
    assert torch.allclose(out["warped"], m, atol=1e-2)
    assert torch.equal(out["warped"], spatial.warp(m, out["ddf"]))
    if cls is RCINet:
        assert len(out["stages"]) == 3 and out["stages"][-1] is out["ddf"]
        assert all(s.shape == (2, 2, 64, 64) for s in out["stages"])

    small = cls(work_size=(64, 64))
    for c in small.modules():  # larger weights so that the field's units are checked on a non-trivial field
        if isinstance(c, nn.Conv2d) and c.out_channels == 2:
            nn.init.normal_(c.weight, std=0.2)
    small.eval()
    big_m, big_f = torch.rand(1, 1, 128, 128), torch.rand(1, 1, 128, 128)
    out = small(big_m, big_f)
    assert out["ddf"].shape == (1, 2, 128, 128) and out["warped"].shape == (1, 1, 128, 128)
    # the field is the 64x64 field resized back with values doubled (pixels of the 128 grid)
    x = spatial.resize_image(torch.cat([big_m, big_f], 1), (64, 64))
    if cls is ACRegNet:
        low = small.unet(x)
    else:
        low = small(x[:, :1], x[:, 1:])["ddf"]
    assert low.abs().max() > 0.05
    assert torch.allclose(out["ddf"], spatial.resize_field(low, (128, 128)), atol=1e-5)
    ratio = (out["ddf"].abs().mean() / low.abs().mean()).item()
    assert 1.8 < ratio < 2.2, ratio
    assert torch.allclose(out["warped"], spatial.warp(big_m, out["ddf"]), atol=1e-6)


@pytest.mark.parametrize("cls,kwargs", [(ACRegNet, {}), (ACRegNet, {"batch_norm": False, "skip": "concat"}),
                                        (RCINet, {"n_cascades": 2})])
def test_gradients_reach_every_parameter(cls, kwargs):
    torch.manual_seed(0)
    net = cls(**kwargs)
    m, f = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out = net(m, f)
    ((out["warped"] - f) ** 2).mean().backward()
    assert_all_grads(net)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    net = ACRegNet(batch_norm=False)
    nn.init.normal_(net.unet.head.weight, std=0.05)
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    net.eval()
    assert torch.equal(net(m, f)["ddf"], net(m, f)["ddf"])
    net.train()
    assert not torch.equal(net(m, f)["ddf"], net(m, f)["ddf"])
    net.unet.dropout = 0.0
    assert torch.equal(net(m, f)["ddf"], net(m, f)["ddf"])


@pytest.mark.parametrize("cls", [ACRegNet, RCINet])
def test_errors(cls):
    with pytest.raises(ValueError, match="2D only"):
        cls(ndim=3)
    with pytest.raises(TypeError):
        cls(2, (16, 32))  # parameters after ndim are keyword-only
    net = cls()
    with pytest.raises(ValueError, match=r"\(60, 64\).*divisible by 8"):
        net(torch.rand(1, 1, 60, 64), torch.rand(1, 1, 60, 64))
    with pytest.raises(ValueError, match="divisible by 8"):
        cls(work_size=(60, 64))
    with pytest.raises(ValueError, match="share a shape"):
        net(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 32))
    # a non-divisible input is fine when the network runs at a divisible work_size
    assert cls(work_size=64)(torch.rand(1, 1, 60, 70), torch.rand(1, 1, 60, 70))["ddf"].shape == (1, 2, 60, 70)


def test_rcinet_composes_constant_shifts_and_warps_the_original_image():
    net = RCINet(n_cascades=3)
    net.cascades = nn.ModuleList([ConstantField(shift(1.0)), ConstantField(shift(2.0)), ConstantField(shift())])
    torch.manual_seed(0)
    m, f = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out = net(m, f)
    for k, total in enumerate([1.0, 3.0, 3.0]):
        assert torch.allclose(out["stages"][k][:, 0], torch.full((2, 32, 32), total))
        assert out["stages"][k][:, 1].abs().max() == 0
    assert torch.allclose(out["warped"][:, :, :-3], m[:, :, 3:], atol=1e-5)  # moving shifted by 3 px, interior
    # each cascade saw (current warped moving, fixed)
    ins = [c.inputs[0] for c in net.cascades]
    assert torch.equal(ins[0], torch.cat([m, f], 1))
    assert torch.allclose(ins[1][:, :1, :-1], m[:, :, 1:], atol=1e-5) and torch.equal(ins[1][:, 1:], f)
    assert torch.allclose(ins[2][:, :1, :-3], m[:, :, 3:], atol=1e-5)


def test_rcinet_warps_once_not_repeatedly():
    """Half-pixel steps: re-interpolating the warped image would blur it; warping the original moving image
    with the composed field gives an exact one-pixel shift after two cascades."""
    net = RCINet(n_cascades=3)
    net.cascades = nn.ModuleList([ConstantField(shift(0.5)), ConstantField(shift(0.5)), ConstantField(shift(0.5))])
    torch.manual_seed(0)
    m, f = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    out = net(m, f)
    assert torch.allclose(net.cascades[2].inputs[0][:, :1, :-1], m[:, :, 1:], atol=1e-5)
    twice = spatial.warp(spatial.warp(m, out["fields"][0]), out["fields"][1])
    assert not torch.allclose(twice[:, :, :-1], m[:, :, 1:], atol=1e-2)  # the blur the test guards against
    total = torch.zeros_like(out["ddf"])
    total[:, 0] = 1.5
    assert torch.allclose(out["ddf"], total) and torch.allclose(out["warped"], spatial.warp(m, total), atol=1e-6)


def test_rcinet_composition_order():
    """ddf_k(x) = psi_k(x) + ddf_{k-1}(x + psi_k(x)): with a linear first field and a constant second one the
    two composition orders differ, and only this one is exact (bilinear sampling of a linear field)."""
    net = RCINet(n_cascades=2)

    def linear(g):
        out = torch.zeros_like(g)
        out[0] = 0.1 * g[0]
        return out[None]

    net.cascades = nn.ModuleList([ConstantField(linear), ConstantField(shift(2.0))])
    m = torch.rand(1, 1, 32, 32)
    out = net(m, m)
    rows = spatial.identity_grid((32, 32))[0]
    expected = 2.0 + 0.1 * (rows + 2.0)  # psi_2 + ddf_1(x + psi_2)
    assert torch.allclose(out["ddf"][0, 0, :-2], expected[:-2], atol=1e-5)
    assert not torch.allclose(out["ddf"][0, 0, :-2], (0.1 * rows + 2.0)[:-2], atol=1e-2)  # wrong order
    psi1 = net.cascades[0](torch.zeros(1, 2, 32, 32))
    assert torch.allclose(out["ddf"], spatial.compose(psi1, out["fields"][1]), atol=1e-6)


def test_acregnet_training_reduces_mse_on_shifted_blobs():
    torch.manual_seed(0)
    moving, fixed = blob(32, (14.0, 17.0), 4.0), blob(32, (17.0, 15.0), 4.0)
    moving, fixed = moving.expand(2, -1, -1, -1), fixed.expand(2, -1, -1, -1)
    net = ACRegNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        out = net(moving, fixed)
        loss = ((out["warped"] - fixed) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    assert all(b < a for a, b in itertools.pairwise(losses[:6])), losses
    # the field near the fixed blob points to the moving blob: u(17, 15) ~ (14 - 17, 17 - 15) = (-3, +2)
    u = out["ddf"][0, :, 15:20, 13:18].mean(dim=(1, 2))
    assert u[0] < -1.0 and u[1] > 0.5, u


def test_grnet_is_the_acregnet_unet_trained_against_its_critic(tiny_prepared, tmp_path):
    """GRNet (He et al. 2022 ref. [25], reconstructed): the AC-RegNet generator (same parameters) trained with an
    adversarial term while its critic learns alongside (its loss and gradient logged every step); the critic is
    GRNetCritic, a four-level pair critic giving one logit per pair."""
    import json

    import pandas as pd

    from regbench.models import build_critic
    from regbench.models.grnet import GRNet, GRNetCritic
    from regbench.train import train

    g, a = build_model("grnet", 2), build_model("acregnet", 2)
    assert isinstance(g, GRNet) and sum(p.numel() for p in g.parameters()) == sum(p.numel() for p in a.parameters())
    critic = build_critic("grnet_critic", 2)
    assert isinstance(critic, GRNetCritic) and critic(torch.zeros(3, 2, 64, 64)).shape == (3, 1)
    method = {"name": "GRNet", "kind": "learned", "model": "grnet", "model_params": {"enc_channels": [8, 16, 32]},
              "train": {"steps": 4, "lr": 1e-3, "batch_size": 2, "checkpoint_every": 2,
                        "losses": [{"name": "ncc"}, {"name": "tv", "weight": 5e-5}, {"name": "adversarial", "weight": 0.1}],
                        "critics": {"critic": {"model": "grnet_critic", "lr": 1e-4, "losses": [{"name": "critic_bce"}]}}}}
    train(tiny_prepared, tmp_path / "g", method, 0, 0, "img", [1, 2], device="cpu")
    log = pd.read_csv(tmp_path / "g" / "train_log.tsv", sep="\t")
    assert {"adversarial", "critic_loss", "critic_grad_norm"} <= set(log.columns) and len(log) == 4
    assert log["critic_grad_norm"].gt(0).all() and log["adversarial"].between(0, 10).all()
    info = json.loads((tmp_path / "g" / "train_info.json").read_text())
    assert info["critic_params"]["critic"] == sum(p.numel() for p in critic.parameters())
