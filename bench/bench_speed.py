"""Speed benchmarks (not tests): VoxelMorph train step and inference, ANTs affine / SyN per pair.

    python bench/bench_speed.py [--device auto|cpu|cuda] [--sizes 48,64,96] [--repeats 5] [--ants]

Prints one TSV row per measurement (what, size, device, seconds median, min); numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from regbench import classical
from regbench.losses import Diffusion, LocalNCC
from regbench.models import build_model
from regbench.utils import select_device


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_it(fn, dev, repeats):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        out.append(time.perf_counter() - t0)
    return statistics.median(out), min(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", default="48,64")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ants", action="store_true", help="also time ANTs affine and SyN (CPU)")
    a = p.parse_args(argv)
    dev = select_device(a.device)
    print("what\tsize\tdevice\tmedian_s\tmin_s")
    for s in (int(x) for x in a.sizes.split(",")):
        model = build_model("voxelmorph", 3, variant="vm2").to(dev)
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        f, m = torch.rand(1, 1, s, s, s, device=dev), torch.rand(1, 1, s, s, s, device=dev)
        ncc, reg = LocalNCC(9), Diffusion()

        def step():
            out = model(m, f)
            loss = ncc(f, out["warped"]) + reg(out["ddf"])
            opt.zero_grad()
            loss.backward()
            opt.step()

        def infer():
            with torch.no_grad():
                model(m, f)

        for name, fn in (("voxelmorph_train_step", step), ("voxelmorph_inference", infer)):
            med, mn = time_it(fn, dev, a.repeats)
            print(f"{name}\t{s}^3\t{dev}\t{med:.4f}\t{mn:.4f}", flush=True)
        if a.ants:
            rng = np.random.default_rng(0)
            from scipy.ndimage import gaussian_filter

            fa = gaussian_filter(rng.random((s, s, s)), 2).astype(np.float32)
            ma = np.roll(fa, 2, axis=0)
            for tr, params in (("ants_affine", {}), ("ants_syn", {"syn_metric": "mattes"}),
                               ("ants_syn", {"syn_metric": "CC", "syn_sampling": 2})):
                _, t = classical.register(fa, ma, (1.0, 1.0, 1.0), tr, params)
                print(f"{tr}[{params.get('syn_metric', '')}]\t{s}^3\tcpu\t{t:.4f}\t{t:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
