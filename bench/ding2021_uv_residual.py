"""U/V near-inverse check of trained MMRegNet models (Ding et al. 2021, Sec. 2: "U and V should be inverse of
each other"): for every test pair, the composition residuals |U o V| and |V o U| in voxels
(:func:`regbench.models.ding2021.inverse_residual`), beside the mean |U| for scale.

    python bench/ding2021_uv_residual.py --prep data/prep/ding2021/demo/demo \
        --model mmregnet=work/ding2021/demo/models/demo/mmregnet/fold0/model.pt \
        --model mmregnet_ngi=work/ding2021/demo/models/demo/mmregnet_ngi/fold0/model.pt \
        --fixed t1 --moving t2 --out results/ding2021/demo/uv_inverse_residual.md

Writes a Markdown table (mean ± std over test pairs of each statistic), atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from regbench.data import PreparedDataset
from regbench.models.ding2021 import inverse_residual
from regbench.train import load_trained
from regbench.utils import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prep", required=True)
    ap.add_argument("--model", action="append", required=True, help="method_id=path/to/model.pt")
    ap.add_argument("--fixed", default="t1")
    ap.add_argument("--moving", default="t2")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    ds = PreparedDataset.open(a.prep)
    pairs = ds.pairs_for(a.fold, "test")
    dev = torch.device("cpu")
    lines = ["| method | test pairs | mean residual (vox) | p95 residual (vox) | max residual (vox) | mean abs(U) (vox) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for item in a.model:
        mid, path = item.split("=", 1)
        model = load_trained(path, dev)
        stats = []
        with torch.no_grad():
            for r in pairs.itertuples():
                f = torch.from_numpy(ds.load(r.fixed, a.fixed).array)[None, None].float()
                m = torch.from_numpy(ds.load(r.moving, a.moving).array)[None, None].float()
                out = model(m, f)
                stats.append(inverse_residual(out["ddf"], out["ddf_inv"]))
        cell = lambda k: f"{np.mean([s[k] for s in stats]):.3f} ± {np.std([s[k] for s in stats], ddof=1):.3f}"  # noqa: E731
        lines.append(f"| {mid} | {len(stats)} | {cell('mean_vox')} | {cell('p95_vox')} | {cell('max_vox')} | "
                     f"{cell('mean_disp_vox')} |")
        print(lines[-1])
    text = ("# U/V near-inverse check (MMRegNet, Ding et al. 2021)\n\n"
            "Residual = per-voxel norm of compose(U, V) and compose(V, U) (zero for exact inverses), in voxels of "
            f"the prepared grid, over the fold-{a.fold} test pairs of `{a.prep}` (fixed `{a.fixed}`, moving "
            f"`{a.moving}`); mean abs(U) gives the scale (the residual of V = 0).\n\n" + "\n".join(lines) + "\n")
    atomic_write_text(Path(a.out), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
