"""Speed of the surface metrics for all labels of one pair: regbench against MONAI and DeepMind surface-distance.

    python bench/bench_metrics.py [--archive PATH] [--repeats 3] [--no-ixi] [--uncropped]
                                  [--out bench/results/metrics_speed]

A benchmark, not a test. Input: two real LPBA40 label maps (S01 as fixed, S02 as "warped": 160x192x160,
1 mm, 56 labels 21..182 + 0) read from the shared archive
``LGANet-Registration-cf193e3a8c05fe2bfc4ec53098fe99d4ba886627-LPBA40.tar`` (default: ``../shared/data/`` next
to the repository), and, unless ``--no-ixi``, two IXI DLMUSE maps (120x120x90, 2 mm, up to 148 labels) from
``NiChart_Project-...-IXI30.tar`` in the same folder. The two maps of a case are different subjects, not a
registered pair, so the distances are large; that makes the surface computations no cheaper.

Measured, for every foreground label present in the fixed map:

* ``regbench``: :func:`regbench.metrics.surface_metrics_per_label` (DSC, HD, HD95, ASSD per label).
* ``monai``: MONAI ``compute_dice`` + ``compute_hausdorff_distance(percentile=95, spacing=...)`` +
  ``compute_average_surface_distance(symmetric=True, spacing=...)`` on one-hot tensors ``(1, L, *spatial)``
  of all labels (``include_background=True``: channel 0 is the first foreground label). The one-hot tensors
  are built once, outside the timed call; their construction time is reported in its own row.
* ``deepmind``: DeepMind ``surface-distance`` (``compute_surface_distances`` per label, then
  ``compute_dice_coefficient``, ``compute_robust_hausdorff(., 95)``, ``compute_average_surface_distance``),
  per-label masks built inside the timed call. Its HD95 and ASD weight surface elements by area (a different
  definition), so its differences show scale, not an error. Skipped with a note when not installed.
* ``--uncropped``: the whole-grid computation regbench used before cropping (LPBA40 case, one run).

All run on one CPU thread by default (``--torch-threads 1`` for MONAI's torch operations; scipy's
erosion, EDT and KD-tree are single-threaded): on a shared machine torch's thread pool slowed MONAI 2-3x.
Repeats are interleaved (regbench, MONAI, DeepMind, regbench, ...) in one process on the same input after
one untimed warm-up call each, so load from other processes hits all of them alike; the table reports the
median and minimum of the repeats and the machine's load average before and after. Values are checked:
the largest absolute difference from regbench's per metric over labels. Writes ``<out>.md`` and ``<out>.tsv``.
Exits 0 with a message when the LPBA40 archive is absent.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from regbench import metrics as M
from regbench.utils import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
LPBA = "LGANet-Registration-cf193e3a8c05fe2bfc4ec53098fe99d4ba886627-LPBA40.tar"
IXI = "NiChart_Project-96c05acd72d035cf9196c27a94cb299d09cdf803-IXI30.tar"
METRICS = ("dsc", "hd95", "assd")


def read_from_tar(archive: Path, suffixes: list[str], tmp: Path) -> list[tuple[np.ndarray, tuple[float, ...]]]:
    """Extract the members whose names end with ``suffixes`` (in that order) and read them with nibabel.

    Returns ``[(integer label map, spacing in mm), ...]``.
    """
    import nibabel as nib

    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        out = []
        for suf in suffixes:
            hits = [m for m in members if m.isfile() and m.name.endswith(suf)]
            if len(hits) != 1:
                raise SystemExit(f"{archive}: expected one member ending in {suf!r}, found {len(hits)}")
            tf.extract(hits[0], tmp, filter="data")
            img = nib.load(str(tmp / hits[0].name))
            arr = np.rint(np.asarray(img.dataobj, dtype=np.float32)).astype(np.int16)
            out.append((arr, tuple(float(z) for z in img.header.get_zooms()[:3])))
    return out


# --------------------------------------------------------------------------------------- implementations
def run_regbench(f, w, labels, spacing):
    out = M.surface_metrics_per_label(f, w, labels, spacing)
    return {k: np.array([out[lab][k] for lab in labels]) for k in METRICS}


def run_uncropped(f, w, labels, spacing):
    """The computation regbench did before cropping: erosion and EDT over the whole grid, label by label."""
    from scipy import ndimage

    st = ndimage.generate_binary_structure(f.ndim, 1)
    res = {k: [] for k in METRICS}
    for lab in labels:
        a, b = f == lab, w == lab
        res["dsc"].append(M.dice(a, b))
        if a.any() and b.any():
            sa = a ^ ndimage.binary_erosion(a, structure=st, border_value=0)
            sb = b ^ ndimage.binary_erosion(b, structure=st, border_value=0)
            d = (ndimage.distance_transform_edt(~sb, sampling=spacing)[sa],
                 ndimage.distance_transform_edt(~sa, sampling=spacing)[sb])
            _, h95, asd = M._surface_summary(*d)
        else:
            h95 = asd = float("nan")
        res["hd95"].append(h95)
        res["assd"].append(asd)
    return {k: np.array(v) for k, v in res.items()}


def monai_onehot(f, w, labels):
    import torch

    def oh(x):
        return torch.from_numpy(np.stack([x == lab for lab in labels])[None]).float()

    return oh(f), oh(w)


def run_monai(F, W, spacing):
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dsc = compute_dice(W, F, include_background=True)
        h95 = compute_hausdorff_distance(W, F, include_background=True, percentile=95, spacing=list(spacing))
        asd = compute_average_surface_distance(W, F, include_background=True, symmetric=True,
                                               spacing=list(spacing))
    return {"dsc": dsc[0].double().numpy(), "hd95": h95[0].double().numpy(), "assd": asd[0].double().numpy()}


def run_deepmind(f, w, labels, spacing):
    import surface_distance as sd

    res = {k: [] for k in METRICS}
    for lab in labels:
        a, b = f == lab, w == lab
        d = sd.compute_surface_distances(a, b, spacing)
        res["dsc"].append(sd.compute_dice_coefficient(a, b))
        res["hd95"].append(sd.compute_robust_hausdorff(d, 95))
        res["assd"].append(float(np.mean(sd.compute_average_surface_distance(d))))  # mean of directed means
    return {k: np.array(v, dtype=np.float64) for k, v in res.items()}


def have(module: str) -> str | None:
    """Version string of ``module`` if importable, else ``None``."""
    try:
        mod = __import__(module)
    except Exception:
        return None
    if module == "surface_distance":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("surface-distance")
        except PackageNotFoundError:
            return "unknown"
    return getattr(mod, "__version__", "unknown")


# ---------------------------------------------------------------------------------------------- timing
def bench_case(name, f, w, spacing, repeats, use_monai, use_dm, uncropped=False):
    labels = [int(x) for x in np.unique(f) if x > 0]
    n_both = sum(1 for lab in labels if (w == lab).any())
    print(f"{name}: shape {f.shape}, spacing {spacing}, {len(labels)} labels ({n_both} in both maps)", flush=True)
    calls = {"regbench": lambda: run_regbench(f, w, labels, spacing)}
    onehot_s = None
    if use_monai:
        t0 = time.perf_counter()
        F, W = monai_onehot(f, w, labels)
        onehot_s = time.perf_counter() - t0
        calls["monai"] = lambda: run_monai(F, W, spacing)
    if use_dm:
        calls["deepmind"] = lambda: run_deepmind(f, w, labels, spacing)
    values = {k: fn() for k, fn in calls.items()}  # warm-up, and the values to compare
    times = {k: [] for k in calls}
    if uncropped:  # slow: timed once, its single run is also its value check
        t0 = time.perf_counter()
        values["regbench uncropped (before, 1 run)"] = run_uncropped(f, w, labels, spacing)
        once = time.perf_counter() - t0
        print(f"  uncropped reference: {once:.2f} s", flush=True)
    for r in range(repeats):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    rows = []
    ref = values["regbench"]
    t_monai = statistics.median(times["monai"]) if "monai" in times else None
    if uncropped:
        times["regbench uncropped (before, 1 run)"] = [once]
    for k in times:
        med = statistics.median(times[k])
        diffs = {}
        for m in METRICS:
            both = np.isfinite(ref[m]) & np.isfinite(values[k][m])
            diffs[m] = float(np.max(np.abs(ref[m][both] - values[k][m][both]))) if both.any() else float("nan")
        rows.append({
            "case": name, "shape": "x".join(map(str, f.shape)), "spacing_mm": "x".join(f"{s:g}" for s in spacing),
            "labels": len(labels), "impl": k, "median_s": med, "min_s": min(times[k]), "repeats": len(times[k]),
            "speedup_vs_monai": (t_monai / med) if t_monai else float("nan"),
            **{f"maxdiff_{m}": diffs[m] for m in METRICS},
        })
    if onehot_s is not None:
        rows.append({"case": name, "shape": "x".join(map(str, f.shape)),
                     "spacing_mm": "x".join(f"{s:g}" for s in spacing), "labels": len(labels),
                     "impl": "monai one-hot build (untimed above)", "median_s": onehot_s, "min_s": onehot_s,
                     "repeats": 1, "speedup_vs_monai": float("nan"),
                     **{f"maxdiff_{m}": float("nan") for m in METRICS}})
    return rows


def machine_info(versions: dict) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu, "cores (os.cpu_count)": os.cpu_count(),
        "cores usable (sched_getaffinity)": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "",
        "torch threads": torch.get_num_threads(), "python": platform.python_version(), **versions,
    }


def write_tables(rows, info, out: Path, load_before, load_after, notes):
    cols = list(rows[0])
    tsv = ["\t".join(cols)]
    for r in rows:
        tsv.append("\t".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    atomic_write_text(out.with_suffix(".tsv"), "\n".join(tsv) + "\n")

    def fmt(v, nd=3):
        if not isinstance(v, float):
            return str(v)
        if np.isnan(v):
            return ""
        return "0" if v == 0 else f"{v:.2g}" if abs(v) < 1e-3 else f"{v:.{nd}f}"

    md = ["# Surface metrics for all labels of one pair: speed", "",
          "Produced by `bench/bench_metrics.py` (median and min of interleaved repeats, one process, same input). "
          "`speedup_vs_monai` = MONAI median / this median (> 1: faster than MONAI). `maxdiff_*` = largest "
          "absolute difference from regbench's value over labels (DSC unitless, distances in mm); MONAI works "
          "in float32. DeepMind's HD95/ASD weight surface elements by area (another definition): its "
          "differences show scale only.", "",
          "| case | shape | spacing (mm) | labels | implementation | median (s) | min (s) | repeats | speedup vs MONAI "
          "| max diff DSC | max diff HD95 | max diff ASSD |",
          "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        md.append(f"| {r['case']} | {r['shape']} | {r['spacing_mm']} | {r['labels']} | {r['impl']} | "
                  f"{r['median_s']:.2f} | {r['min_s']:.2f} | {r['repeats']} | {fmt(r['speedup_vs_monai'], 1)} | "
                  f"{fmt(r['maxdiff_dsc'], 2)} | {fmt(r['maxdiff_hd95'], 2)} | {fmt(r['maxdiff_assd'], 2)} |")
    md += ["", "Machine:", ""]
    md += [f"- {k}: {v}" for k, v in info.items()]
    md += [f"- load average (1, 5, 15 min) before: {load_before}, after: {load_after}"]
    md += [f"- {n}" for n in notes]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", type=Path, default=DATA / LPBA, help="the LPBA40 archive")
    p.add_argument("--ixi-archive", type=Path, default=DATA / IXI, help="the IXI30 archive (optional case)")
    p.add_argument("--no-ixi", action="store_true", help="skip the IXI case")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads for MONAI (default 1, like the single-threaded scipy code of "
                        "regbench and DeepMind; 0 keeps torch's default)")
    p.add_argument("--uncropped", action="store_true",
                   help="also time, once, the uncropped whole-grid computation regbench used before (slow)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "metrics_speed",
                   help="output path without suffix (.md and .tsv are written)")
    a = p.parse_args(argv)
    if not a.archive.exists():
        print(f"skipped: LPBA40 archive not found at {a.archive} (pass --archive)")
        return 0
    if a.torch_threads > 0:
        import torch

        torch.set_num_threads(a.torch_threads)
    versions = {"regbench metrics": "src/regbench/metrics.py (this checkout)", "numpy": np.__version__,
                "scipy": have("scipy"), "torch": have("torch"), "monai": have("monai"),
                "surface-distance (DeepMind)": have("surface_distance")}
    use_monai, use_dm = versions["monai"] is not None, versions["surface-distance (DeepMind)"] is not None
    notes = []
    if not use_monai:
        notes.append("MONAI not installed (pip install -r bench/requirements.txt): no MONAI rows")
    if not use_dm:
        notes.append("DeepMind surface-distance not installed (PyPI `surface-distance`): no DeepMind rows")
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (f, sf), (w, _) = read_from_tar(a.archive, ["label/S01.delineation.structure.label.nii.gz",
                                                    "label/S02.delineation.structure.label.nii.gz"], Path(tmp))
        rows += bench_case("LPBA40 S01 vs S02", f, w, sf, a.repeats, use_monai, use_dm, a.uncropped)
        if not a.no_ixi and a.ixi_archive.exists():
            with tarfile.open(a.ixi_archive) as tf:
                names = sorted(m.name for m in tf.getmembers() if m.name.endswith("_T1_DLMUSE.nii.gz"))
            (f2, s2), (w2, _) = read_from_tar(a.ixi_archive, ["/" + Path(n).name for n in names[:2]], Path(tmp))
            ids = " vs ".join(Path(n).name.split("_T1")[0] for n in names[:2])
            rows += bench_case(f"IXI DLMUSE {ids}", f2, w2, s2, a.repeats, use_monai, use_dm)
        elif not a.no_ixi:
            notes.append(f"IXI archive not found at {a.ixi_archive}: IXI case skipped")
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if max(load_before[0], load_after[0]) > 0.75 * cores:
        notes.append(f"the CPU was shared with other work (1-min load up to {max(load_before[0], load_after[0])} "
                     f"on {cores} cores): absolute times are inflated and noisy; the repeats were interleaved so "
                     "each implementation met the same load, and min and median are both given")
    write_tables(rows, machine_info(versions), a.out, load_before, load_after, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
