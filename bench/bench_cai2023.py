"""Cai et al. 2023 cascades at the paper's 128^3: training memory of a 3-stage cascade, and inference time on
CPU against ANTs SyN-CC on the same pair (benchmark, not a test; issue "Cai et al. 2023 end to end").

    python bench/bench_cai2023.py [--method dr_mcr3_l] [--config config/papers/cai2023.yaml]
                                  [--measure-size 64] [--size 128] [--repeats 2] [--threads 2]
                                  [--prep data/prep/cai2023/demo/demo] [--skip-speed] [--device cpu|cuda]
                                  [--out bench/results/cai2023]

**Memory** (training, batch 1, float32, Adam). The method is built exactly as the full-protocol config builds it
(paper widths, the VTN affine stem for 128^3). Peak training memory is estimated as

    weights + gradients + Adam's two moments (16 bytes per parameter)
    + the tensors autograd saves for the backward pass of one training step (the model's forward and the
      config's loss terms), counted once per storage with ``torch.autograd.graph.saved_tensors_hooks``,

measured at ``--measure-size``^3 (the affine stem built for that grid) and scaled by the voxel ratio to
``--size``^3 (every saved tensor is a feature map or field whose size is proportional to the voxel count; the
few that are not, e.g. the affine matrix, are negligible). Transient buffers of the backward pass (gradient
of one activation at a time, convolution workspaces) come on top; the estimate states them as not counted.
On a CUDA device (``--device cuda``) the step is also run at ``--size``^3 and ``torch.cuda.max_memory_allocated``
is reported beside the estimate.

**Speed**: one test pair of a prepared dataset (default the Cai demo's, 64^3) resampled trilinearly to
``--size``^3; the method's forward under ``torch.no_grad()`` (seeded initialisation: the time does not depend
on the weights) against :func:`regbench.classical.register` with the demo's SyN-CC settings (ANTs affine stage,
then SyN with CC radius 2, 40/20/0 iterations) on the same arrays; interleaved repeats, medians reported.

Writes ``<out>_memory.md``/``.tsv`` and ``<out>_speed.md``/``.tsv``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from regbench import classical, terms
from regbench.config import load_experiments
from regbench.models import build_model
from regbench.utils import atomic_write_text, select_device

GIB = 1024 ** 3


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _method(config: str, method: str) -> dict:
    exp = next(iter(load_experiments({"experiments": [config]}).values()))
    if method not in exp["methods"]:
        raise SystemExit(f"{config}: no method {method!r}; methods: {sorted(exp['methods'])}")
    return exp["methods"][method]


def _build(spec: dict, n: int, dev: torch.device) -> torch.nn.Module:
    params = copy.deepcopy(spec.get("model_params", {}))
    if params.get("affine"):
        params["image_size"] = [n, n, n]
    torch.manual_seed(0)
    return build_model(spec["model"], 3, **params).to(dev)


def _train_step_saved_bytes(model: torch.nn.Module, spec: dict, n: int, dev: torch.device
                            ) -> tuple[int, dict[str, int], float]:
    """Bytes autograd saves in the forward of one training step at ``n^3`` (distinct storages), the same split by
    region (``subnet<k>`` while deformable sub-network ``k`` runs, ``rest`` otherwise: affine stem, warps,
    compositions, loss terms), and the step's wall time (s)."""
    loss_terms = terms.build_terms(spec["train"]["losses"])
    seen: dict[tuple, int] = {}
    region_of: dict[tuple, str] = {}
    current = ["rest"]
    handles = []
    for k, sub in enumerate(getattr(model, "subnets", [])):  # called through .flow / .multiscale: wrap those
        for name in ("flow", "multiscale"):
            orig = getattr(sub, name)

            def wrapped(*args, _orig=orig, _k=k, **kw):
                current[0] = f"subnet{_k}"
                try:
                    return _orig(*args, **kw)
                finally:
                    current[0] = "rest"

            setattr(sub, name, wrapped)
            handles.append((sub, name))

    def pack(t: torch.Tensor):
        try:
            st = t.untyped_storage()
            key = (st.data_ptr(), st.device.type)
            seen[key] = max(seen.get(key, 0), st.nbytes())
            region_of.setdefault(key, current[0])
        except (RuntimeError, NotImplementedError):  # e.g. sparse or meta tensors: not expected here
            pass
        return t

    g = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, 1, n, n, n, generator=g).to(dev)
    moving = torch.rand(1, 1, n, n, n, generator=g).to(dev)
    model.train()
    _sync(dev)
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(moving, fixed)
        ctx = terms.TermContext({"fixed": fixed, "moving": moving}, out)
        loss, _ = terms.weighted_sum(loss_terms, ctx, torch.zeros((), device=dev))
    loss.backward()
    _sync(dev)
    wall = time.perf_counter() - t0
    for sub, name in handles:
        delattr(sub, name)  # back to the class's method
    regions: dict[str, int] = {}
    for key, nbytes in seen.items():
        regions[region_of[key]] = regions.get(region_of[key], 0) + nbytes
    return sum(seen.values()), regions, wall


def memory(a, dev: torch.device) -> list[str]:
    spec = copy.deepcopy(_method(a.config, a.method))
    spec.setdefault("model_params", {})["checkpoint"] = False  # the plain variant (the config may enable it)
    model_full = _build(spec, a.size, torch.device("cpu"))
    n_params = sum(p.numel() for p in model_full.parameters())
    del model_full
    ratio = (a.size / a.measure_size) ** 3
    state = 16 * n_params
    model = _build(spec, a.measure_size, dev)
    saved, regions, wall = _train_step_saved_bytes(model, spec, a.measure_size, dev)
    subs = {k: v for k, v in regions.items() if k.startswith("subnet")}
    del model
    ck_spec = copy.deepcopy(spec)
    ck_spec.setdefault("model_params", {})["checkpoint"] = True
    model = _build(ck_spec, a.measure_size, dev)
    held, _, wall_ck = _train_step_saved_bytes(model, ck_spec, a.measure_size, dev)
    del model
    # checkpointed peak: what the forward holds (outside the sub-networks, plus their inputs and outputs) and,
    # while the backward pass recomputes one sub-network, that sub-network's activations
    peak_ck = held + max(subs.values(), default=0)
    est = {"plain": state + saved * ratio, "checkpoint": state + peak_ck * ratio}
    rows = []
    for variant, held_b, w in (("plain", saved, wall), ("checkpoint (per sub-network)", peak_ck, wall_ck)):
        rows.append({"method": spec["name"], "variant": variant, "parameters": n_params,
                     "weights+grads+Adam (GiB)": state / GIB,
                     f"activations held at {a.measure_size}^3 (GiB)": held_b / GIB,
                     f"activations held at {a.size}^3 (GiB, x{ratio:g})": held_b * ratio / GIB,
                     f"estimated training peak at {a.size}^3 (GiB)": (state + held_b * ratio) / GIB,
                     f"step at {a.measure_size}^3 on {dev} (s)": w})
    measured = {}
    if dev.type == "cuda":
        for variant, sp in (("plain", spec), ("checkpoint", ck_spec)):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            try:
                model = _build(sp, a.size, dev)
                opt = torch.optim.Adam(model.parameters(), 1e-4)
                _, _, wall_full = _train_step_saved_bytes(model, sp, a.size, dev)
                opt.step()
                measured[variant] = (torch.cuda.max_memory_allocated(dev) / GIB, wall_full)
            except torch.cuda.OutOfMemoryError:
                measured[variant] = (math.nan, math.nan)
            model = opt = None
        for r, variant in zip(rows, ("plain", "checkpoint")):
            r[f"measured CUDA peak at {a.size}^3 (GiB)"], r[f"step at {a.size}^3 on {dev} (s)"] = measured[variant]
    df = pd.DataFrame(rows)
    out = Path(f"{a.out}_memory")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".tsv"), sep="\t", index=False, float_format="%.4f")

    def fits(b: float) -> str:
        return "fits" if b / GIB < 22.4 else "does NOT fit"

    split = ", ".join(f"{k} {v * ratio / GIB:.2f}" for k, v in sorted(regions.items()))
    lines = [
        f"# Cai et al. 2023: training memory of {spec['name']} at {a.size}^3, batch 1 (bench/bench_cai2023.py)",
        "",
        f"Built as `{a.config}` builds `{a.method}` ({spec.get('model_params')}); loss terms of its `train.losses`; "
        "float32, Adam. Activations: the tensors autograd saves for the backward pass (distinct storages), counted "
        f"at {a.measure_size}^3 and scaled by the voxel ratio.",
        "",
        df.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"- Plain: {est['plain'] / GIB:.1f} GiB; it {fits(est['plain'])} a 24 GB GPU (about 22.4 GiB usable after "
        f"the CUDA context). Activations by region at {a.size}^3 (GiB): {split}.",
        f"- With `checkpoint: true` (model_params; activation checkpointing per sub-network, same values and "
        f"gradients, tested): {est['checkpoint'] / GIB:.1f} GiB; it {fits(est['checkpoint'])}. The backward pass "
        "then recomputes each sub-network's forward once (the step costs about one more forward).",
        "- Not counted: transient buffers of the backward pass (one activation gradient at a time, convolution "
        "workspaces).",
        ("- Measured on " + str(dev) + ": " + ", ".join(f"{k} {v[0]:.2f} GiB peak allocated" for k, v in measured.items())
         if measured else "- Not measured on a GPU here (none was available)."),
        "",
        _machine(a),
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    return lines


def speed(a, dev: torch.device) -> list[str]:
    from regbench.data import PreparedDataset

    spec = _method(a.config, a.method)
    syn = _method(a.syn_config, "syn_cc")["params"]
    if not (Path(a.prep) / "pairs.tsv").exists():
        raise SystemExit(f"{a.prep}/pairs.tsv not found: preprocess first (snakemake {a.prep}/pairs.tsv "
                         "--configfile config/papers/cai2023_demo.yaml)")
    ds = PreparedDataset.open(a.prep)
    row = ds.pairs_for(0, "test").iloc[0]
    fixed, moving = ds.load(row["fixed"], "t1"), ds.load(row["moving"], "t1")
    n = a.size
    f = F.interpolate(torch.from_numpy(fixed.array)[None, None], size=(n, n, n), mode="trilinear", align_corners=False)
    m = F.interpolate(torch.from_numpy(moving.array)[None, None], size=(n, n, n), mode="trilinear", align_corners=False)
    spacing = tuple(float(e) * s / n for e, s in zip(fixed.spacing, fixed.array.shape))
    fa, ma = f[0, 0].numpy(), m[0, 0].numpy()
    model = _build(spec, n, dev).eval()
    fd, md = f.to(dev), m.to(dev)
    contenders = {
        spec["name"]: lambda: model(md, fd),
        "SyN-CC (ANTs)": lambda: classical.register(fa, ma, spacing, "ants_syn", syn, seed=0),
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    with torch.no_grad():
        contenders[spec["name"]]()  # warm-up
        for r in range(a.repeats):
            order = list(contenders)[r % 2:] + list(contenders)[: r % 2]
            for k in order:
                _sync(dev)
                t0 = time.perf_counter()
                contenders[k]()
                _sync(dev)
                times[k].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{a.repeats}: " + ", ".join(f"{k} {times[k][-1]:.1f} s" for k in order), flush=True)
    net = statistics.median(times[spec["name"]])
    df = pd.DataFrame([{"contender": k, "device": str(dev) if k == spec["name"] else "cpu", "grid": f"{n}^3",
                        "median_s": statistics.median(v), "min_s": min(v), "repeats": len(v),
                        "median_vs_network": statistics.median(v) / net} for k, v in times.items()])
    out = Path(f"{a.out}_speed")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".tsv"), sep="\t", index=False, float_format="%.4f")
    lines = [
        f"# Cai et al. 2023: inference of {spec['name']} vs SyN-CC at {n}^3 (bench/bench_cai2023.py)",
        "",
        f"Pair `{row['pair_id']}` of `{a.prep}` ({'x'.join(map(str, fixed.array.shape))}) resampled trilinearly to "
        f"{n}^3 (spacing {spacing[0]:.2f} mm). Network: `{a.config}` `{a.method}` at the paper's widths, seeded "
        f"initialisation, batch 1, no_grad. SyN-CC: `{a.syn_config}` settings {syn}. Interleaved repeats.",
        "",
        df.to_markdown(index=False, floatfmt=".2f"),
        "",
        _machine(a),
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    return lines


def _machine(a) -> str:
    return (f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} with {a.threads} "
            f"threads; {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Other processes may have "
            "shared the machine (interleaving exposes both contenders to the same load).")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/papers/cai2023.yaml")
    p.add_argument("--syn-config", default="config/demo.yaml",
                   help="experiment whose syn_cc method gives the SyN-CC settings (the embedded demo)")
    p.add_argument("--method", default="dr_mcr3_l")
    p.add_argument("--measure-size", type=int, default=64)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--prep", default="data/prep/cai2023/demo/demo")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--out", default="bench/results/cai2023")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(a.threads))
    dev = select_device(a.device)
    if not a.skip_memory:
        print("\n".join(memory(a, dev)), flush=True)
    if not a.skip_speed:
        print("\n".join(speed(a, dev)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
