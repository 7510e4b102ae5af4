"""The learned baselines of Zhu et al. 2021 (SYMNet, FAIM, Multi-FC): outputs and identity start in 2D and
tiny 3D, SYMNet's inverse-consistent forward and backward fields, the folding and magnitude terms, training by
the method blocks of docs/baselines_zhu2021.md, and parameter counts against the published / released ones."""

import copy
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.ndimage import gaussian_filter

from regbench import spatial
from regbench.config import validate_experiment
from regbench.models import MODELS, build_critic, build_model
from regbench.models.wrappers import CRITICS
from regbench.terms import TermContext, build_terms, forward_jacobian_determinant
from regbench.train import load_trained, train

from conftest import REPO

DOC = REPO / "docs" / "baselines_zhu2021.md"


def _doc_methods() -> dict:
    """The method blocks of docs/baselines_zhu2021.md, by id."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    out = {}
    for b in blocks:
        out.update(yaml.safe_load(b))
    return out


def _tiny(method: dict, steps: int = 3) -> dict:
    """A method block shrunk for the 32x32 toy: few steps, batch 2, small windows, a larger learning rate."""
    m = copy.deepcopy(method)
    tcfg = m["train"]
    tcfg.pop("epochs", None)
    tcfg.update(steps=steps, batch_size=2, lr=1e-3, checkpoint_every=steps)
    for t in tcfg["losses"]:
        if t["name"] == "lncc":
            t["window"] = 5
    return m


def _smooth_field(shape, amplitude, seed, sigma=4.0):
    rng = np.random.default_rng(seed)
    comps = [gaussian_filter(rng.standard_normal(shape), sigma) for _ in shape]
    f = np.stack([c / np.abs(c).max() for c in comps])
    return torch.from_numpy((amplitude * f).astype(np.float32))[None]


# ------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
@pytest.mark.parametrize("name", ["symnet", "faim", "multifc"])
def test_outputs_and_identity_start(name, shape):
    torch.manual_seed(0)
    nd = len(shape)
    model = build_model(name, nd)
    m, f = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    with torch.no_grad():
        out = model(m, f)
    assert out["ddf"].shape == (2, nd, *shape) and out["warped"].shape == m.shape
    assert out["ddf"].abs().max() < 1e-2  # near-zero heads: training starts at the identity
    torch.testing.assert_close(out["warped"], spatial.warp(m, out["ddf"]))
    if name == "symnet":
        for k in ("ddf_inv", "velocity_moving", "velocity_fixed", "ddf_moving_half", "ddf_fixed_half",
                  "ddf_moving_half_inv", "ddf_fixed_half_inv"):
            assert out[k].shape == (2, nd, *shape), k
        for k in ("warped_inv", "moving_half", "fixed_half"):
            assert out[k].shape == m.shape, k
        torch.testing.assert_close(out["warped_inv"], spatial.warp(f, out["ddf_inv"]))
        torch.testing.assert_close(out["moving_half"], spatial.warp(m, out["ddf_moving_half"]))


def test_size_checks():
    with pytest.raises(ValueError, match="divisible by 16"):
        build_model("symnet", 2)(torch.rand(1, 1, 24, 32), torch.rand(1, 1, 24, 32))
    with pytest.raises(ValueError, match="divisible by 8"):
        build_model("multifc", 2)(torch.rand(1, 1, 20, 32), torch.rand(1, 1, 20, 32))
    with pytest.raises(ValueError, match="half_time"):
        build_model("symnet", 2, half_time=0.25)
    out = build_model("faim", 2)(torch.rand(1, 1, 27, 33), torch.rand(1, 1, 27, 33))  # odd sizes: pad/crop
    assert out["ddf"].shape == (1, 2, 27, 33)


# ------------------------------------------------------------------------------------------- SYMNet fields


@pytest.mark.parametrize("shape", [(48, 40), (24, 24, 24)])
def test_symnet_full_fields_are_inverse_and_composed_through_the_mean_space(shape):
    nd = len(shape)
    model = build_model("symnet", nd)
    v_m, v_f = _smooth_field(shape, 1.5, 1), _smooth_field(shape, 1.5, 2)
    m, f = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    with torch.no_grad():
        out = model.fields_from_velocities(v_m, v_f, m, f)
    inner = (slice(None), slice(None)) + (slice(4, -4),) * nd
    assert out["ddf"].abs().max() > 0.5  # a real deformation, not the identity
    for a, b in (("ddf", "ddf_inv"), ("ddf_inv", "ddf"), ("ddf_moving_half", "ddf_moving_half_inv")):
        residual = spatial.compose(out[a], out[b])[inner]
        assert residual.abs().max() < 0.05, (a, b, float(residual.abs().max()))
    # the forward field goes fixed grid -> mean space (inverse fixed half) -> moving image (moving half)
    torch.testing.assert_close(out["ddf"], spatial.compose(out["ddf_moving_half"], out["ddf_fixed_half_inv"]))
    # t = 0.5: the half-way field is half the flow of the velocity
    torch.testing.assert_close(out["ddf_moving_half"], spatial.integrate_velocity(0.5 * v_m, 6))
    # symmetric: swapping the images and the velocities swaps the forward and backward outputs
    with torch.no_grad():
        swapped = model.fields_from_velocities(v_f, v_m, f, m)
    torch.testing.assert_close(swapped["ddf"], out["ddf_inv"])
    torch.testing.assert_close(swapped["warped_inv"], out["warped"])


def test_symnet_velocities_are_bounded_by_the_softsign_range():
    model = build_model("symnet", 2, max_velocity=3.0)
    with torch.no_grad():
        for h in model.heads:
            h.weight.normal_(0, 10.0)
        v_m, v_f = model.velocities(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    assert v_m.abs().max() < 3.0 and v_f.abs().max() < 3.0 and v_m.abs().max() > 1.0


# ------------------------------------------------------------------------------------------- terms


def _term(spec, outputs, batch=None):
    (t,) = build_terms([spec])
    return t(TermContext(batch or {}, outputs))


@pytest.mark.parametrize("nd", [2, 3])
def test_forward_jacobian_determinant_of_a_linear_field(nd):
    torch.manual_seed(nd)
    a = 0.3 * torch.randn(nd, nd)
    shape = (6,) * nd
    grid = spatial.identity_grid(shape)
    u = torch.einsum("ij,j...->i...", a, grid)[None]
    det = forward_jacobian_determinant(u)
    assert det.shape == (1, *(5,) * nd)
    torch.testing.assert_close(det, torch.full_like(det, float(torch.linalg.det(torch.eye(nd) + a))))


@pytest.mark.parametrize("nd", [2, 3])
def test_jacobian_penalty_is_zero_without_folding_and_positive_with(nd):
    shape = (12,) * nd
    zero = torch.zeros(2, nd, *shape)
    for reduction in ("mean", "sum"):
        for difference in ("forward", "central"):
            spec = {"name": "neg_jacobian", "reduction": reduction, "difference": difference}
            assert float(_term(spec, {"ddf": zero})) == 0.0
            smooth = _smooth_field(shape, 1.0, 0).expand(2, *([-1] * (nd + 1)))  # |grad u| << 1: no folding
            assert float(_term(spec, {"ddf": smooth})) == 0.0
    # a reflection along axis 0 in the middle third of the grid: u_0 = -2 x_0 there, det J = -1
    x0 = spatial.identity_grid(shape)[0]
    fold = torch.zeros(1, nd, *shape)
    fold[0, 0] = torch.where((x0 >= 4) & (x0 < 8), -2.0 * (x0 - 6.0), torch.zeros_like(x0))
    mean = _term({"name": "neg_jacobian"}, {"ddf": fold})
    total = _term({"name": "neg_jacobian", "reduction": "sum"}, {"ddf": fold})
    assert float(mean) > 0.1
    torch.testing.assert_close(total, mean * 11**nd)
    assert float(_term({"name": "neg_jacobian", "difference": "central"}, {"ddf": fold})) > 0.1
    # rebinding reads another field; the gradient pushes towards unfolding
    fold.requires_grad_(True)
    _term({"name": "neg_jacobian", "inputs": {"field": "ddf_inv"}}, {"ddf": zero[:1], "ddf_inv": fold}).backward()
    assert fold.grad.abs().sum() > 0


def test_magnitude_difference():
    a = _smooth_field((16, 16), 2.0, 3)
    out = {"ddf_moving_half": a, "ddf_fixed_half": -a, "velocity_moving": a, "velocity_fixed": 2 * a}
    assert float(_term({"name": "magnitude_difference"}, out)) == 0.0  # equal lengths, opposite directions
    got = _term({"name": "magnitude_difference", "inputs": {"a": "velocity_moving", "b": "velocity_fixed"}}, out)
    torch.testing.assert_close(got, a.abs().sum() / a.numel())
    got2 = _term({"name": "magnitude_difference", "power": 2,
                  "inputs": {"a": "velocity_moving", "b": "velocity_fixed"}}, out)
    torch.testing.assert_close(got2, 3 * (a * a).sum() / a.numel())


# ------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("mid", ["symnet", "faim", "multifc"])
def test_trains_with_the_documented_method_block(mid, tiny_prepared, tmp_path):
    method = _tiny(_doc_methods()[mid])
    path = train(tiny_prepared, tmp_path / "run", method, 0, 0, "img", [1, 2], device="cpu")
    log = pd.read_csv(tmp_path / "run" / "train_log.tsv", sep="\t")
    assert len(log) == 3
    labels = [t.get("label", t["name"]) for t in method["train"]["losses"]]
    for col in labels + ["loss", "grad_norm"]:
        assert np.isfinite(log[col]).all(), col
    weights = [t.get("weight", 1.0) for t in method["train"]["losses"]]
    np.testing.assert_allclose(log["loss"], sum(w * log[c] for w, c in zip(weights, labels)), rtol=1e-5, atol=1e-6)
    if mid == "multifc":
        assert (log["critic_grad_norm"] > 0).all() and np.isfinite(log["critic_critic_bce"]).all()
    model = load_trained(path, torch.device("cpu"))
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    assert out["ddf"].shape == (1, 2, 32, 32)


def test_documented_method_blocks_pass_the_config_schema():
    exp = {"experiment": "t", "protocol": "p", "seed": 0,
           "datasets": {"demo": {"preprocess": "demo", "modality": "t1", "folds": [0], "labels": {1: "a"}}},
           "methods": _doc_methods(), "report": {"title": "t", "metrics": ["dsc"]}}
    validate_experiment(exp, "docs/baselines_zhu2021.md")
    assert set(exp["methods"]) == {"symnet", "faim", "multifc"}


def test_schema_lists_exactly_the_registered_models_and_critics():
    text = (REPO / "workflow/schemas/experiment.schema.yaml").read_text()
    models, critics = (set(re.split(r",\s*", e)) for e in re.findall(r"model: \{enum: \[(.*?)\]\}", text, re.S))
    assert models == set(MODELS) and critics == set(CRITICS)
    assert {"symnet", "faim", "multifc"} <= models and "multifc_critic" in critics


# ------------------------------------------------------------------------------------------- parameter counts


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts():
    # SYMNet: the layers of the authors' released SYMNet(2, 3, start_channel=8); no count in the paper
    assert _count(build_model("symnet", 3)) == 1_124_448
    # FAIM: the released weights (SDN3d_weights_incept0.h5, lpba_incept0.h5) hold 233,683 numbers
    assert _count(build_model("faim", 3)) == 233_683
    # Multi-FC: no published count; our reconstruction
    assert _count(build_model("multifc", 3)) == 370_579
    assert _count(build_critic("multifc_critic", 3)) == 436_737
