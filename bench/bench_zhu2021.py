"""Inference time per pair of Zhu et al.'s network (full and affine only) against ANTs SyN and ANTs affine on
the same pair and grid (benchmark, not a test; the paper's Table III measures the same on a GPU).

    python bench/bench_zhu2021.py [--prep data/prep/zhu2021/lpba40] [--pair S02__S03] [--repeats 5]
                                  [--threads 2] [--device auto|cpu|cuda] [--model work/.../model.pt]
                                  [--sizes 64,96] [--out bench/results/zhu2021_speed]

The pair is read from a prepared dataset (``regbench preprocess``, e.g. the zhu2021 experiment's LPBA40 at
64^3); other ``--sizes`` resample the same pair to n^3 (trilinear) so the scaling with the grid shows.
Contenders, per size, batch 1:

* ``ours``: :class:`regbench.models.zhu2021.Zhu2021Net` forward under ``torch.no_grad()`` (trained weights with
  ``--model``, else a seeded initialisation: the time does not depend on the weights);
* ``ours (affine only)``: the same network with ``affine_only=True`` (the deformable part is skipped);
* ``SyN``: :func:`regbench.classical.register` with the zhu2021 config's SyN settings (CC radius 2, affine
  stage + SyN 40/20/0 iterations), CPU, the ``ants.registration`` call;
* ``ANTs affine``: the same for the config's affine.

Repeats are interleaved (each round runs every contender once); medians and minima are reported, with each
contender's median relative to ours. Writes ``<out>.tsv`` and ``<out>.md`` (machine, versions, date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from regbench import classical
from regbench.config import load_experiments
from regbench.data import PreparedDataset
from regbench.models import build_model
from regbench.train import load_trained
from regbench.utils import atomic_write_text, select_device


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev) -> float:
    _sync(dev)
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prep", default="data/prep/zhu2021/lpba40")
    p.add_argument("--pair", default=None, help="pair_id of pairs.tsv (default: the first test pair)")
    p.add_argument("--config", default="config/papers/zhu2021_archives.yaml")
    p.add_argument("--model", default=None, help="trained model.pt of the proposed network (optional)")
    p.add_argument("--sizes", default="64", help="comma-separated cube sizes n (n^3 grids), divisible by 8")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-ants-above", type=int, default=128, help="do not run ANTs on grids larger than n^3")
    p.add_argument("--out", default="bench/results/zhu2021_speed")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(a.threads))
    dev = select_device(a.device)
    if not (Path(a.prep) / "pairs.tsv").exists():
        print(f"{a.prep}/pairs.tsv not found: preprocess first (snakemake data/prep/zhu2021/lpba40/pairs.tsv "
              f"--configfile {a.config})", file=sys.stderr)
        return 2
    exp = next(iter(load_experiments({"experiments": [a.config]}).values()))
    syn_params, aff_params = exp["methods"]["syn"]["params"], exp["methods"]["ants_affine"]["params"]
    ds = PreparedDataset.open(a.prep)
    pairs = ds.pairs_for(0, "test")
    row = pairs.iloc[0] if a.pair is None else pairs.set_index("pair_id").loc[a.pair].rename(a.pair)
    pid = a.pair or row["pair_id"]
    fixed, moving = ds.load(row["fixed"], "t1"), ds.load(row["moving"], "t1")

    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        f = torch.from_numpy(fixed.array)[None, None]
        m = torch.from_numpy(moving.array)[None, None]
        if tuple(f.shape[2:]) != (n, n, n):
            f = F.interpolate(f, size=(n, n, n), mode="trilinear", align_corners=False)
            m = F.interpolate(m, size=(n, n, n), mode="trilinear", align_corners=False)
        spacing = tuple(float(e) * s / n for e, s in zip(fixed.spacing, fixed.array.shape))
        f, m = f.to(dev), m.to(dev)
        torch.manual_seed(0)
        if a.model:
            full = load_trained(a.model, dev)
            aff = load_trained(a.model, dev, {"affine_only": True})
        else:
            full = build_model("zhu2021", 3).to(dev).eval()
            aff = build_model("zhu2021", 3, affine_only=True).to(dev).eval()
            aff.load_state_dict(full.state_dict())
        fa, ma = f[0, 0].cpu().numpy(), m[0, 0].cpu().numpy()
        contenders = {
            "ours": lambda: full(m, f),
            "ours (affine only)": lambda: aff(m, f),
        }
        if n <= a.skip_ants_above:
            contenders["SyN"] = lambda: classical.register(fa, ma, spacing, "ants_syn", syn_params, seed=0)
            contenders["ANTs affine"] = lambda: classical.register(fa, ma, spacing, "ants_affine", aff_params, seed=0)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        with torch.no_grad():
            for k in ("ours", "ours (affine only)"):  # warm-up (allocator, kernel selection)
                contenders[k]()
            for r in range(a.repeats):
                order = list(contenders)[r % len(contenders):] + list(contenders)[: r % len(contenders)]
                for k in order:
                    times[k].append(_timed(contenders[k], dev))
                print(f"{n}^3 round {r + 1}/{a.repeats}: " + ", ".join(f"{k} {times[k][-1]:.3f} s" for k in order),
                      flush=True)
        ours = statistics.median(times["ours"])
        for k, v in times.items():
            rows.append({"grid": f"{n}^3", "contender": k, "device": str(dev) if k.startswith("ours") else "cpu",
                         "median_s": statistics.median(v), "min_s": min(v), "repeats": len(v),
                         "median_vs_ours": statistics.median(v) / ours})
    df = pd.DataFrame(rows)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".tsv"), sep="\t", index=False, float_format="%.4f")
    import ants  # noqa: F401  (version only)

    lines = [
        "# Zhu et al. 2021: inference time per pair, proposed network vs ANTs (bench/bench_zhu2021.py)",
        "",
        f"Pair `{pid}` of `{a.prep}` ({'x'.join(map(str, fixed.array.shape))} prepared grid; other grids resampled "
        f"trilinearly). Weights: {'trained, ' + a.model if a.model else 'seeded initialisation (time does not depend on them)'}. "
        f"ANTs settings from `{a.config}` (SyN: {syn_params}; affine: {aff_params}). Interleaved repeats, batch 1.",
        "",
        df.assign(median_s=df.median_s.map("{:.3f}".format), min_s=df.min_s.map("{:.3f}".format),
                  median_vs_ours=df.median_vs_ours.map("{:.1f}x".format)).to_markdown(index=False),
        "",
        "Paper (Table III, GPU, 192^3): Ours 1.18 s (LPBA40), affine only 0.29 s, SyN 33.32 s, ANTs affine 7.73 s; "
        "SyN / Ours = 28x (Mindboggle 22x, IXI 22x).",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} with {a.threads} threads, "
        f"antspyx {__import__('importlib.metadata').metadata.version('antspyx')}; "
        f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Other processes may have shared the "
        "machine; interleaving exposes every contender to the same load.",
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
