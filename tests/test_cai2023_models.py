"""Cai et al. 2023: DR-Net, VTN/VoxelMorph bases, the affine stem, CR and MCR cascades, edge and affine terms."""

from __future__ import annotations

import math

import pytest
import torch

from regbench import spatial
from regbench.metrics import count_parameters
from regbench.models import MODELS, build_model
from regbench.models.cai2023 import (
    SCAM,
    VTN,
    Cai2023Cascade,
    DRNet,
    IncepBlock,
    VMBase,
    VTNAffine,
    _bilinear_upconv_,
    _upconv,
)
from regbench.terms import TERMS, TermContext, build_terms, sobel_magnitude

MIB_PER_PARAM = 12 / 2**20  # float32 weights + Adam's two moments, the reading of the paper's "Para. (Mb)"


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, *shape, generator=g), torch.rand(1, 1, *shape, generator=g)


def test_registered():
    assert MODELS["cai2023"] is Cai2023Cascade
    assert {"sobel_edge", "affine_reg"} <= set(TERMS)


def test_parameter_counts_match_paper_para_column():
    """Table 4: Affine 162, VoxelMorph 165, IVTN 485, DR-Net 417 'Mb' (each includes the affine network)."""
    affine = count_parameters(VTNAffine(3, image_size=128)) * MIB_PER_PARAM
    vtn = count_parameters(VTN(3)) * MIB_PER_PARAM
    vm = count_parameters(VMBase(3)) * MIB_PER_PARAM
    dr = count_parameters(DRNet(3)) * MIB_PER_PARAM
    assert abs(affine - 162) / 162 < 0.01
    assert abs(affine + vtn - 485) / 485 < 0.01
    assert abs(affine + vm - 165) / 165 < 0.01
    assert abs(affine + dr - 417) / 417 < 0.10
    # cascades scale linearly (Table 5/7: IVTN-CR3 1131, DR-MCR3 931)
    cr3 = count_parameters(Cai2023Cascade(3, base="vtn", stages=3, affine=True, image_size=128)) * MIB_PER_PARAM
    assert abs(cr3 - 1131) / 1131 < 0.01


def test_drnet_ablation_switches_change_parameters():
    full = count_parameters(DRNet(3))
    no_scam = count_parameters(DRNet(3, scam=False))
    no_pim = count_parameters(DRNet(3, scam=False, pim=False))
    none = count_parameters(DRNet(3, scam=False, pim=False, incep=False))
    no_respath = count_parameters(DRNet(3, respath=False))
    # SCAM: one attention block per decoder level on 2w channels: MLP (2w*(2w/16) + 2w/16 + (2w/16)*2w + 2w)
    # and the spatial branch (2->8->8->1 3x3x3 convolutions)
    widths = (24, 48, 96, 192)
    scam = 0
    for w in widths:
        c, mid = 2 * w, max(2 * w // 16, 1)
        scam += c * mid + mid + mid * c + c + (2 * 8 * 27 + 8) + (8 * 8 * 27 + 8) + (8 * 27 + 1)
    assert full - no_scam == scam
    # PIM: three stride-2 convolutions 2->8, 8->8, 8->8 plus 8 extra input channels of three IncepBlocks
    assert no_scam - no_pim > (2 * 8 * 27 + 8) + 2 * (8 * 8 * 27 + 8)
    assert none != no_pim and no_respath < full


def test_incep_block_and_scam_shapes():
    x = torch.randn(2, 5, 8, 8, 8)
    assert IncepBlock(3, 5, 12)(x).shape == (2, 12, 8, 8, 8)
    s = SCAM(3, 5)
    assert s(x).shape == x.shape
    # F_z = F * M_c + F * M_s with sigmoid weights: |F_z| <= 3 |F| voxel-wise
    assert bool((s(x).abs() <= 3 * x.abs() + 1e-6).all())


@pytest.mark.parametrize("ndim,shape", [(2, (32, 48)), (3, (16, 16, 32))])
def test_drnet_shapes_and_identity_at_init(ndim, shape):
    m, f = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    net = DRNet(ndim, widths=(8, 12, 16, 20, 24), multiscale=True)
    out = net(m, f)
    assert out["ddf"].shape == (1, ndim, *shape)
    assert float(out["ddf"].abs().max()) < 1e-2  # flow head N(0, 1e-5): starts at the identity
    ms = net.multiscale(torch.cat([m, f], 1))
    assert [tuple(t.shape[2:]) for t in ms] == [tuple(s // 4 for s in shape), tuple(s // 2 for s in shape), shape]


def test_drnet_kaiming_init_lets_the_gradient_reach_the_encoder():
    """With PyTorch's default init the gradient reaching DR-Net's first encoder convolution at initialisation is
    far below Adam's eps (1e-8), so the encoder cannot move (the 200-step demo stayed at the identity); the
    He-normal init (the default) keeps the features' scale through the ~60 convolutions and lifts that gradient
    by orders of magnitude. The field heads keep their N(0, 1e-5) start either way."""
    m, f = _pair((32, 32, 32))

    def first_grad(init):
        torch.manual_seed(0)
        net = DRNet(3, widths=(8, 16, 24, 32, 48), pim_channels=4, init=init)
        feats = net.decoder_features(torch.cat([m, f], 1))[-1]
        ddf = net.head(feats)
        loss = -(spatial.warp(m, ddf) * f).mean()
        loss.backward()
        assert float(net.head.weight.abs().max()) < 1e-4
        return float(net.enc_first[0].c1.weight.grad.abs().mean()), float(feats.std())

    g_torch, s_torch = first_grad("torch")
    g_he, s_he = first_grad("kaiming")
    assert g_he > 1e3 * g_torch
    assert 0.2 < s_he / float(torch.cat([m, f], 1).std()) < 5  # signal scale kept to the top decoder level
    with pytest.raises(ValueError, match="init"):
        DRNet(3, widths=(8, 8, 8, 8, 8), init="xavier")


def test_bad_grid_raises():
    net = DRNet(3, widths=(8, 8, 8, 8, 8))
    with pytest.raises(ValueError, match="divisible by 16"):
        net(*_pair((16, 16, 24)))
    with pytest.raises(ValueError, match="divisible by 64"):
        Cai2023Cascade(3, base="vtn")(*_pair((32, 32, 32)))
    with pytest.raises(ValueError, match="unknown base"):
        Cai2023Cascade(3, base="unet")


def test_bilinear_upconv_doubles_a_constant_field():
    conv = _upconv(3, 3, 3, bias=False)
    _bilinear_upconv_(conv, 3)
    field = torch.ones(1, 3, 4, 4, 4) * torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1, 1)
    up = conv(field)
    inner = up[:, :, 1:-1, 1:-1, 1:-1]  # borders see zero padding
    assert torch.allclose(inner, 2 * field[:, :, :1, :1, :1].expand_as(inner))


class _Const(torch.nn.Module):
    """A stand-in sub-network returning fixed fields (to check the cascade arithmetic)."""

    multiple = 16

    def __init__(self, fields):
        super().__init__()
        self.fields = fields
        self.calls = []

    def flow(self, x):
        self.calls.append(x)
        return self.fields[-1]

    def multiscale(self, x):
        self.calls.append(x)
        return list(self.fields)


def test_cr_composition_and_single_interpolation():
    torch.manual_seed(0)
    shape = (16, 16, 16)
    moving, fixed = _pair(shape)
    casc = Cai2023Cascade(3, base="voxelmorph", stages=2, mode="cr")
    f1, f2 = torch.randn(1, 3, *shape), torch.randn(1, 3, *shape)
    casc.subnets = torch.nn.ModuleList([_Const([f1]), _Const([f2])])
    out = casc(moving, fixed)
    expect = f2 + spatial.warp(f1, f2, mode="bilinear", padding_mode="border")
    assert torch.allclose(out["ddf"], expect, atol=1e-6)
    assert torch.allclose(out["warped"], spatial.warp(moving, expect), atol=1e-6)
    # the second stage sees the moving image warped by the first field
    assert torch.allclose(casc.subnets[1].calls[0][:, :1], spatial.warp(moving, f1), atol=1e-6)
    assert torch.equal(out["stages"][1]["flow"], f2) and torch.equal(out["flow"], out["ddf"])


def test_mcr_accumulation_and_cooperation():
    torch.manual_seed(1)
    shape = (16, 16, 16)
    moving, fixed = _pair(shape)
    casc = Cai2023Cascade(3, base="voxelmorph", stages=2, mode="mcr")
    sizes = [(4, 4, 4), (8, 8, 8), shape]
    a = [0.3 * torch.randn(1, 3, *s) for s in sizes]
    b = [0.3 * torch.randn(1, 3, *s) for s in sizes]
    casc.subnets = torch.nn.ModuleList([_Const(a), _Const(b)])
    out = casc(moving, fixed)

    def acc(n, f):
        r = [f[0]]
        for i in (1, 2):
            r.append(f[i] + casc.acc_up[n][i - 1](r[-1]))
        return r

    acc_a, acc_b = acc(0, a), acc(1, b)
    coop = [spatial.compose(x, y) for x, y in zip(acc_a, acc_b)]
    assert torch.allclose(out["ddf"], coop[-1], atol=1e-5)
    assert torch.allclose(out["stages"][0]["ddf"], acc_a[-1], atol=1e-5)
    for k in range(2):
        up = spatial.resize_field(coop[k], shape)
        assert torch.allclose(out["scales"][k]["flow"], up, atol=1e-5)
        assert torch.allclose(out["scales"][k]["warped"], spatial.warp(moving, up), atol=1e-5)
    assert out["scales"][2]["warped"] is out["warped"]


@pytest.mark.parametrize("base", ["drnet", "voxelmorph"])
def test_cascade_identity_at_init_and_parameters(base):
    shape = (16, 16, 16)
    moving, fixed = _pair(shape)
    params = {"widths": (8, 8, 12, 12, 16)} if base == "drnet" else {}
    one = build_model("cai2023", 3, base=base, stages=1, base_params=params)
    cr2 = build_model("cai2023", 3, base=base, stages=2, mode="cr", base_params=params)
    mcr2 = build_model("cai2023", 3, base=base, stages=2, mode="mcr", base_params=params)
    assert count_parameters(cr2) == 2 * count_parameters(one)
    assert count_parameters(mcr2) > count_parameters(cr2)
    for m in (one, cr2, mcr2):
        out = m(moving, fixed)
        assert float(out["ddf"].abs().max()) < 0.05
        assert torch.allclose(out["warped"], moving, atol=0.05)


def test_vtn_and_affine_cascade_forward():
    shape = (64, 64, 64)
    moving, fixed = _pair(shape)
    casc = Cai2023Cascade(3, base="vtn", stages=2, mode="mcr", affine=True, image_size=64,
                          base_params={"channels": 4})
    out = casc(moving, fixed)
    assert out["ddf"].shape == (1, 3, *shape) and out["affine"].shape == (1, 3, 4)
    assert torch.allclose(out["affine"], torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)[None])  # zero init
    assert len(out["stages"]) == 2 and len(out["scales"]) == 3
    only = Cai2023Cascade(3, base="vtn", stages=2, affine=True, image_size=64, affine_only=True,
                          base_params={"channels": 4})
    o = only(moving, fixed)
    assert torch.equal(o["ddf"], o["affine_ddf"])
    with pytest.raises(ValueError, match="affine stem built for"):
        VTNAffine(3, image_size=128)(torch.rand(1, 2, 64, 64, 64))


def test_affine_stem_matrix_applies_as_rcn():
    """A known W, b gives the RCN displacement W (x - c) + b."""
    net = VTNAffine(2, image_size=64)
    with torch.no_grad():
        net.b.weight.zero_()
    m = torch.tensor([[[1.1, 0.0, 2.0], [0.0, 0.9, -1.0]]])
    ddf = spatial.affine_to_ddf(m, (64, 64))
    c = 31.5
    assert math.isclose(float(ddf[0, 0, 0, 0]), 0.1 * (0 - c) + 2.0, rel_tol=1e-5)
    assert math.isclose(float(ddf[0, 1, 63, 63]), -0.1 * (63 - c) - 1.0, rel_tol=1e-5)


def test_sobel_edge_term():
    x = torch.zeros(1, 1, 8, 8, 8)
    x[..., 4:] = 1.0  # a step along the last axis
    s = sobel_magnitude(x)
    # central difference across the step (1) times the 3x3 smoothing sum (16) on interior voxels
    assert math.isclose(float(s[0, 0, 4, 4, 4]), 16.0, rel_tol=1e-5)
    assert float(s[0, 0, 4, 4, 1]) < 1e-5
    terms = build_terms([{"name": "sobel_edge"}, {"name": "sobel_edge", "label": "edge_norm", "form": "norm"}])
    same = TermContext({"fixed": x, "moving": x}, {"warped": x})
    assert all(float(t(same)) < 1e-6 for t in terms)
    shifted = torch.roll(x, 1, dims=-1)
    ctx = TermContext({"fixed": x, "moving": shifted}, {"warped": shifted})
    assert float(terms[0](ctx)) > 0 and float(terms[1](ctx)) > 0


def test_affine_reg_term():
    det, ortho = build_terms([{"name": "affine_reg", "label": "det", "part": "det"},
                              {"name": "affine_reg", "label": "ortho", "part": "ortho"}])
    ident = torch.cat([torch.eye(3), torch.ones(3, 1)], 1)[None]
    assert float(det(TermContext({}, {"affine": ident}))) < 1e-10
    assert abs(float(ortho(TermContext({}, {"affine": ident})))) < 1e-6
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert abs(float(ortho(TermContext({}, {"affine": torch.cat([rot, torch.zeros(3, 1)], 1)[None]})))) < 1e-5
    scaled = torch.cat([2 * torch.eye(3), torch.zeros(3, 1)], 1)[None]
    assert math.isclose(float(det(TermContext({}, {"affine": scaled}))), 0.5 * 49, rel_tol=1e-5)
    assert float(ortho(TermContext({}, {"affine": scaled}))) > 1.0


def test_multiscale_terms_read_scales():
    shape = (16, 16, 16)
    moving, fixed = _pair(shape)
    m = build_model("cai2023", 3, base="voxelmorph", stages=2, mode="mcr")
    out = m(moving, fixed)
    terms = build_terms([
        {"name": "ncc", "label": "sim_l4"},
        {"name": "ncc", "label": "sim_l3", "weight": 0.5, "inputs": {"warped": "scales.1.warped"}},
        {"name": "diffusion", "label": "reg_l2", "inputs": {"field": "scales.0.flow"}},
        {"name": "sobel_edge"},
    ])
    ctx = TermContext({"fixed": fixed, "moving": moving}, out)
    total = sum(t.weight * t(ctx) for t in terms)
    total.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("mode", ["cr", "mcr"])
def test_checkpointed_cascade_gives_the_same_values_and_gradients(mode):
    """checkpoint=True recomputes each sub-network in the backward pass: outputs and every parameter gradient
    equal the plain cascade's (same weights), and it saves fewer tensors for the backward pass."""
    moving, fixed = _pair((16, 16, 16), seed=3)
    params = {"widths": (8, 8, 12, 12, 16), "pim_channels": 4}
    torch.manual_seed(0)
    plain = build_model("cai2023", 3, base="drnet", stages=2, mode=mode, base_params=params)
    ckpt = build_model("cai2023", 3, base="drnet", stages=2, mode=mode, base_params=params, checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    with torch.no_grad():  # leave the identity so that the second stage sees a warped image
        for p in plain.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    ckpt.load_state_dict(plain.state_dict())

    def run(model):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = model(moving, fixed)
            loss = ((out["warped"] - fixed) ** 2).mean() + out["flow"].pow(2).mean()
        loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(saved)

    out_p, g_p, saved_p = run(plain)
    out_c, g_c, saved_c = run(ckpt)
    assert torch.allclose(out_p["ddf"], out_c["ddf"], atol=1e-6)
    assert g_p.keys() == g_c.keys() and len(g_p) > 0
    for n in g_p:
        assert torch.allclose(g_p[n], g_c[n], rtol=1e-4, atol=1e-7), n
    assert saved_c < saved_p / 2
