"""Bit-identity check of regbench's warping, losses and networks against a baseline source tree (not a test).

    git worktree add /tmp/vxm-base <old commit>
    python bench/check_identity.py --baseline-src /tmp/vxm-base/src [--steps 20] [--quick]

Speed work on the default path must not change a single float on CPU (existing experiments reproduce
exactly). This script imports the baseline ``regbench`` under another name in the same process and compares,
with ``torch.equal`` (every element bit-equal, up to the sign of zeros), on seeded random inputs:

* forward values and gradients (w.r.t. every differentiable input, for a random output gradient) of
  ``spatial.warp`` (bilinear/nearest, border/zeros/reflection padding, batch broadcasting), ``warp_labels``,
  ``compose``, ``integrate_velocity``, ``resize_field`` (up and down), ``resize_image``,
  ``jacobian_determinant``, and of the losses ``LocalNCC`` (windows 9 and 5), ``Diffusion`` (l1/l2,
  px/normalized), ``SSIMLoss`` (gaussian/uniform), ``GlobalNCC``, in float32 and float64, 2D and 3D, at
  several grid sizes (the conv backend PyTorch picks depends on the size);
* every parameter and buffer, the loss trajectory and the ``torch.no_grad()`` outputs, after ``--steps`` Adam steps of VoxelMorph (VM-2 and
  VM-1; ``int_steps`` 0 and 7) with LocalNCC(9) + Diffusion at 2D and 3D sizes including the demo's, and of
  He et al. 2022's network and AC-RegNet / RCINet at 64x64, batch 4, with global NCC + SSIM + TV on the
  normalised field + soft Dice on linearly warped one-hot labels.

Prints one line per check and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_voxelmorph import load_regbench_from  # noqa: E402

FAILS: list[str] = []


def report(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'DIFF'} {name}{'  ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILS.append(name)


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def compare_fn(name, fn_new, fn_old, inputs, seed=0):
    """Run both on clones of ``inputs`` (tensors with requires_grad where floating), compare outputs/grads."""
    outs, grads = [], []
    for fn in (fn_new, fn_old):
        xs = [x.detach().clone().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x
              for x in inputs]
        y = fn(*xs)
        ys = y if isinstance(y, (tuple, list)) else (y,)
        outs.append([t.detach() for t in ys])
        diff_in = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
        diff_out = [t for t in ys if t.requires_grad]
        if diff_in and diff_out:
            g = torch.Generator().manual_seed(seed)
            gout = [torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) for t in diff_out]
            grads.append([gr for gr in torch.autograd.grad(diff_out, diff_in, gout, allow_unused=True)])
        else:
            grads.append([])
    ok = all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))
    detail = "" if ok else f"out max|diff| {max(max_diff(a, b) for a, b in zip(outs[0], outs[1])):.3g}"
    for ga, gb in zip(grads[0], grads[1]):
        if (ga is None) != (gb is None) or (ga is not None and not torch.equal(ga, gb)):
            ok = False
            detail += f" grad max|diff| {max_diff(ga, gb):.3g}" if ga is not None and gb is not None else " grad"
    report(name, ok, detail)


def function_checks(new, old, quick: bool):
    sp_n, sp_o = new.spatial, old.spatial
    ls_n, ls_o = importlib.import_module(f"{new.__name__}.losses"), importlib.import_module(f"{old.__name__}.losses")
    shapes = [(64, 64), (37, 45), (256, 256), (16, 20, 24), (64, 80, 64)] + ([] if quick else [(13, 17, 19),
                                                                                            (96, 128, 96)])
    for dtype in (torch.float32, torch.float64):
        for shape in shapes:
            nd = len(shape)
            tag = f"{'x'.join(map(str, shape))} {str(dtype)[6:]}"
            g = torch.Generator().manual_seed(hash(shape) % 1000)
            img = torch.rand(2, 1, *shape, generator=g, dtype=dtype).requires_grad_()
            img3 = torch.rand(1, 3, *shape, generator=g, dtype=dtype).requires_grad_()
            ddf = (3 * torch.randn(2, nd, *shape, generator=g, dtype=dtype)).requires_grad_()
            v = (2 * torch.randn(2, nd, *shape, generator=g, dtype=dtype)).requires_grad_()
            for mode in ("bilinear", "nearest"):
                for pad in ("border", "zeros", "reflection"):
                    compare_fn(f"warp {mode}/{pad} {tag}", lambda a, b: sp_n.warp(a, b, mode, pad),
                               lambda a, b: sp_o.warp(a, b, mode, pad), [img, ddf])
            compare_fn(f"warp broadcast C=3 {tag}", sp_n.warp, sp_o.warp, [img3, ddf])
            lab = (torch.rand(1, 1, *shape, generator=g) * 4).long()
            compare_fn(f"warp_labels {tag}", sp_n.warp_labels, sp_o.warp_labels, [lab, ddf.detach()])
            compare_fn(f"compose {tag}", sp_n.compose, sp_o.compose, [ddf, v])
            compare_fn(f"integrate_velocity 7 {tag}", lambda a: sp_n.integrate_velocity(a, 7),
                       lambda a: sp_o.integrate_velocity(a, 7), [v])
            for size in ([s // 2 for s in shape], [s * 2 for s in shape] if nd == 2 else [s + 8 for s in shape]):
                compare_fn(f"resize_field ->{size} {tag}", lambda a: sp_n.resize_field(a, size),
                           lambda a: sp_o.resize_field(a, size), [ddf])
                compare_fn(f"resize_image ->{size} {tag}", lambda a: sp_n.resize_image(a, size),
                           lambda a: sp_o.resize_image(a, size), [img])
            compare_fn(f"jacobian_determinant {tag}", sp_n.jacobian_determinant, sp_o.jacobian_determinant,
                       [ddf])
            fixed = torch.rand(2, 1, *shape, generator=g, dtype=dtype)
            for w in (9, 5):
                compare_fn(f"LocalNCC({w}) {tag}", ls_n.LocalNCC(w), ls_o.LocalNCC(w), [fixed, img])
            for pen in ("l1", "l2"):
                for unit in ("px", "normalized"):
                    compare_fn(f"Diffusion({pen},{unit}) {tag}", ls_n.Diffusion(pen, unit),
                               ls_o.Diffusion(pen, unit), [ddf])
            compare_fn(f"GlobalNCC {tag}", ls_n.GlobalNCC(), ls_o.GlobalNCC(), [fixed, img])
            if nd == 2 or not quick:
                for k in ("gaussian", "uniform"):
                    compare_fn(f"SSIM({k}) {tag}", ls_n.SSIMLoss(kernel=k), ls_o.SSIMLoss(kernel=k), [fixed, img])


def train_pair(pkg, build, loss_kind, shape, batch, steps, lr, seed=0):
    """Build a network with ``build(pkg)`` after seeding, train ``steps`` Adam steps, return (state, losses)."""
    losses = importlib.import_module(f"{pkg.__name__}.losses")
    sp = pkg.spatial
    torch.manual_seed(seed)
    model = build(pkg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    nd = len(shape)
    fixed = torch.rand(batch, 1, *shape, generator=g)
    moving = torch.rand(batch, 1, *shape, generator=g)
    pool = {2: torch.nn.functional.avg_pool2d, 3: torch.nn.functional.avg_pool3d}[nd]
    fixed, moving = (pool(x, 5, stride=1, padding=2) for x in (fixed, moving))
    seg = (fixed > fixed.mean()).float()
    onehot = torch.cat([1 - seg, seg], 1)
    mseg = (moving > moving.mean()).float()
    monehot = torch.cat([1 - mseg, mseg], 1)
    if loss_kind == "vxm":
        ncc, reg = losses.LocalNCC(9), losses.Diffusion()

        def loss_fn(out):
            return ncc(fixed, out["warped"]) + reg(out["ddf"])
    else:
        gncc, ssim = losses.GlobalNCC(), losses.SSIMLoss()
        tv, dice = losses.Diffusion("l1", "normalized"), losses.SoftDice()

        def loss_fn(out):
            return (gncc(fixed, out["warped"]) + ssim(fixed, out["warped"]) + 3.5 * tv(out["ddf"])
                    + dice(onehot, sp.warp(monehot, out["ddf"])))
    hist = []
    model.train()
    for _ in range(steps):
        out = model(moving, fixed)
        loss = loss_fn(out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(loss.detach())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():  # inference path (no autograd) of the trained network
        out = model(moving, fixed)
    for k in ("ddf", "warped"):
        state[f"inference:{k}"] = out[k]
    return state, torch.stack(hist)


def training_checks(new, old, steps: int, quick: bool):
    def vm(variant="vm2", int_steps=0, nd=3):
        return lambda pkg: importlib.import_module(f"{pkg.__name__}.models.voxelmorph").VoxelMorph(
            nd, variant, int_steps=int_steps)

    he = lambda pkg: importlib.import_module(f"{pkg.__name__}.models.he2022").He2022RegNet(2, n_scales=4)  # noqa
    acr = lambda pkg: importlib.import_module(f"{pkg.__name__}.models.acregnet").ACRegNet(2)  # noqa
    rci = lambda pkg: importlib.import_module(f"{pkg.__name__}.models.acregnet").RCINet(2, n_cascades=3)  # noqa
    cases = [
        ("VoxelMorph vm2 2D 64x64", vm(nd=2), "vxm", (64, 64), 1, steps),
        ("VoxelMorph vm2 2D 256x256", vm(nd=2), "vxm", (256, 256), 1, steps),
        ("VoxelMorph vm2 diff(7) 2D 64x64", vm(int_steps=7, nd=2), "vxm", (64, 64), 1, steps),
        ("VoxelMorph vm1 2D 128x96 batch 2", vm("vm1", nd=2), "vxm", (128, 96), 2, steps),
        ("VoxelMorph vm2 3D 32x32x32", vm(), "vxm", (32, 32, 32), 1, steps),
        ("VoxelMorph vm2 3D 64x80x64 (demo grid)", vm(), "vxm", (64, 80, 64), 1, steps),
        ("VoxelMorph vm2 diff(7) 3D 32x48x32", vm(int_steps=7), "vxm", (32, 48, 32), 1, steps),
        ("He2022 4 scales 2D 64x64 batch 4", he, "he", (64, 64), 4, steps),
        ("ACRegNet 2D 64x64 batch 4", acr, "he", (64, 64), 4, steps),
        ("RCINet 3 cascades 2D 64x64 batch 4", rci, "he", (64, 64), 4, max(steps // 2, 1)),
    ]
    if not quick:
        cases.append(("VoxelMorph vm2 3D 96x128x96", vm(), "vxm", (96, 128, 96), 1, 3))
    for name, build, kind, shape, batch, n in cases:
        t0 = time.perf_counter()
        sn, hn = train_pair(new, build, kind, shape, batch, n, 1e-3)
        t1 = time.perf_counter()
        so, ho = train_pair(old, build, kind, shape, batch, n, 1e-3)
        t2 = time.perf_counter()
        bad = [k for k in sn if not torch.equal(sn[k], so[k])]
        ok = not bad and torch.equal(hn, ho)
        detail = f"{n} steps, {len(sn)} tensors, loss {float(hn[-1]):.6f}, time new {t1 - t0:.1f}s old {t2 - t1:.1f}s"
        if bad:
            detail += f"; differing: {bad[:4]} max|diff| {max(max_diff(sn[k], so[k]) for k in bad):.3g}"
        report(f"train {name}", ok, detail)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-src", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="fewer sizes, no 96x128x96")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-functions", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import regbench

    old = load_regbench_from(a.baseline_src)
    importlib.import_module(f"{old.__name__}.spatial")
    importlib.import_module("regbench.spatial")
    print(f"new: {Path(regbench.__file__).parent}  baseline: {Path(old.__file__).parent}  torch {torch.__version__}")
    if not a.skip_functions:
        function_checks(regbench, old, a.quick)
    if not a.skip_train:
        training_checks(regbench, old, a.steps, a.quick)
    print(f"{len(FAILS)} differing" + (": " + ", ".join(FAILS) if FAILS else ""))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
