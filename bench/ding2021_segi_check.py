"""Is SEGI minimal at the true alignment? Ding et al. 2021's similarity terms (SEGI, Eq. 5-8, sigma {1, 1.5, 3};
NGI, Eq. 4 with the same cosine) of each method's warped test images against the fixed images, beside their
values for the moving image unregistered ("identity") and warped by the ground-truth field ("true field"): the
demo's synthetic subjects carry their template fields, so the true fixed->moving displacement of every pair is
known (:func:`regbench.datasets.demo.true_pair_ddf`). A method whose SEGI is below the true field's while its DSC
is not above it has found a minimum of the loss away from the true alignment.

    python bench/ding2021_segi_check.py --experiment ding2021/demo --dataset demo \\
        --methods ants_affine syn_mi voxelmorph mmregnet_ngi mmregnet \\
        --out results/ding2021/demo/segi_vs_true_field.md

Reads data/prep/<experiment>/<dataset> and work/<experiment>/reg/<dataset>/<method>/fold<k>/<pair>_warped.nii.gz;
writes a Markdown table (mean ± std over the fold's test pairs), atomically. The settings of both terms are the
demo's (eps 0.05, |cos|, normalise then smooth).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from regbench import spatial
from regbench.data import PreparedDataset
from regbench.datasets.demo import true_pair_ddf
from regbench.io import load_ddf, load_image
from regbench.losses import SpatiallyEncodedGradient
from regbench.utils import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="ding2021/demo")
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--fixed", default="t1")
    ap.add_argument("--moving", default="t2")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    ds = PreparedDataset.open(Path("data/prep") / a.experiment / a.dataset)
    reg = Path("work") / a.experiment / "reg" / a.dataset
    terms = {"SEGI (sigma 1, 1.5, 3)": SpatiallyEncodedGradient(sigmas=[1.0, 1.5, 3.0], eps=0.05, order="normalize",
                                                                cosine="abs"),
             "NGI (sigma 0)": SpatiallyEncodedGradient(sigmas=[0.0], eps=0.05, order="normalize", cosine="abs")}
    rows = []
    with torch.no_grad():
        for r in ds.pairs_for(a.fold, "test").itertuples():
            f = torch.from_numpy(ds.load(r.fixed, a.fixed).array)[None, None]
            m = torch.from_numpy(ds.load(r.moving, a.moving).array)[None, None]
            g = true_pair_ddf(load_ddf(ds.path(r.fixed, "ddf")), load_ddf(ds.path(r.moving, "ddf")))
            warped = {"identity (no registration)": m,
                      "true field": spatial.warp(m, torch.from_numpy(np.asarray(g, dtype=np.float32))[None])}
            for meth in a.methods:
                p = reg / meth / f"fold{a.fold}" / f"{r.pair_id}_warped.nii.gz"
                warped[meth] = torch.from_numpy(load_image(p).array)[None, None]
            for k, w in warped.items():
                rows.append({"warped": k, **{n: float(t(w, f)) for n, t in terms.items()}})
    df = pd.DataFrame(rows)
    agg = df.groupby("warped", sort=False).agg(["mean", "std"])
    lines = [f"# SEGI and NGI of the warped test images ({a.experiment}, {a.dataset}, fold {a.fold}, "
             f"{len(df) // len(agg)} pairs; lower is better)", "",
             "| warped moving image | " + " | ".join(terms) + " |", "| --- |" + " --- |" * len(terms)]
    for k in agg.index:
        lines.append(f"| {k} | " + " | ".join(f"{agg.loc[k, (n, 'mean')]:.4f} ± {agg.loc[k, (n, 'std')]:.4f}"
                                               for n in terms) + " |")
    atomic_write_text(Path(a.out), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
