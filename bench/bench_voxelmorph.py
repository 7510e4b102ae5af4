"""Side-by-side speed of regbench's VoxelMorph and voxelmorph 0.3.4's ``VxmPairwise`` (benchmark, not a test).

    python bench/bench_voxelmorph.py [--sizes 256x256,96x128x96] [--repeats 9] [--warmup 2] [--threads 2]
                                     [--device auto|cpu|cuda] [--amp off,bfloat16]
                                     [--peer-int-steps 5] [--baseline-src /tmp/vxm-base/src]
                                     [--fast] [--profile] [--out bench/results/voxelmorph_speed]

What is timed, per size, batch 1, same seeded inputs for every contender:

* ``train``: one optimiser step: forward, loss, ``zero_grad``, backward, Adam step (lr 1e-4).
* ``infer``: one ``torch.no_grad()`` forward returning field and warped moving image.

Contenders:

* ``regbench``: :class:`regbench.models.voxelmorph.VoxelMorph` (VM-2, ``int_steps=0``) trained with
  :class:`regbench.losses.LocalNCC` (window 9) + :class:`regbench.losses.Diffusion` (weight 1).
* ``peer``: ``voxelmorph.nn.models.VxmPairwise(ndim, 1, 1, nb_features=(16, 32, 32, 32, 32))`` (its default
  ``integration_steps=5`` unless ``--peer-int-steps``), trained with its working losses (voxelmorph 0.3.4's own
  ``losses.NCC``/``Grad`` raise NotImplementedError): ``-neurite.nn.modules.NCC(9)`` +
  ``neurite.nn.modules.SpatialGradient('l2')``.
* ``peer(int_steps=0)`` (with ``--peer-int0``): the peer without its velocity integration, i.e. a plain
  displacement field like regbench's default ``int_steps=0`` (ratios stay relative to ``peer``).
* ``baseline`` (with ``--baseline-src``): the same as ``regbench`` but imported from another source tree (e.g. a
  ``git worktree`` of an older commit), loaded under another package name in the same process.
* ``fast:channels_last`` (with ``--fast``): ``regbench`` with the opt-in, numerically different fast path
  ``VoxelMorph(channels_last=True)``; not the default path (results differ from it in the last bits).

Repeats are interleaved: each round runs every contender once (train step, then inference), the order rotating
between rounds, so that load from other processes hits every contender alike. Reported: median and minimum
seconds per contender and phase, the ratio of each contender's median to the peer's, and the paired ratio (median
over rounds of the time over the peer's time in the same round). On CUDA the timings are synchronised
(``torch.cuda.synchronize`` before and after). ``--amp off,bfloat16`` also runs every contender with the forward
under ``torch.autocast`` (float16 adds a ``GradScaler``), the losses in float32; the mode is a column of the
table. Mixed precision is a benchmark option only: no experiment uses it.

Writes ``<out>.tsv`` (one row per size, phase and contender) and ``<out>.md`` (tables, parameter counts,
machine). Text below the line ``<!-- notes -->`` of an existing ``<out>.md`` is kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

NOTES_MARK = "<!-- notes -->"
PEER_FEATURES = (16, 32, 32, 32, 32)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def load_regbench_from(src: str, name: str = "regbench_baseline"):
    """Import the ``regbench`` package found in ``src`` under the top-level name ``name``.

    Its modules use relative imports only, so both versions can live in one process.
    """
    init = Path(src) / "regbench" / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(f"no regbench package under {src}")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    importlib.import_module(f"{name}.models.voxelmorph")
    importlib.import_module(f"{name}.losses")
    return mod


def smooth_pair(shape, dev, seed: int = 0):
    """Seeded fixed/moving images ``(1, 1, *shape)`` in [0, 1]: blurred noise and a shifted copy."""
    g = torch.Generator().manual_seed(seed)
    nd = len(shape)
    x = torch.rand(1, 1, *shape, generator=g)
    pool = {2: torch.nn.functional.avg_pool2d, 3: torch.nn.functional.avg_pool3d}[nd]
    for _ in range(2):
        x = pool(x, 5, stride=1, padding=2, count_include_pad=False)
    x = (x - x.min()) / (x.max() - x.min())
    m = torch.roll(x, shifts=(3,) * nd, dims=tuple(range(2, 2 + nd)))
    return x.to(dev), m.to(dev)


class Contender:
    """One network + loss + optimiser with ``train()`` and ``infer()`` closures."""

    def __init__(self, name, model, loss_fn, forward, dev, amp):
        self.name, self.model, self.dev = name, model.to(dev), dev
        self.loss_fn, self.forward = loss_fn, forward
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.amp = amp  # None or a torch dtype
        self.scaler = torch.amp.GradScaler(dev.type) if amp is torch.float16 else None
        self.times = {"train": [], "infer": []}

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def conv_macs(self, moving, fixed) -> int:
        """Multiply-accumulates of all convolutions in one forward (batch 1), counted with forward hooks."""
        total = [0]

        def hook(mod, inp, out):
            k = 1
            for s in mod.kernel_size:
                k *= s
            total[0] += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * k

        hooks = [m.register_forward_hook(hook) for m in self.model.modules()
                 if isinstance(m, torch.nn.modules.conv._ConvNd)]
        try:
            with torch.no_grad():
                self.forward(self.model, moving[:1], fixed[:1])
        finally:
            for h in hooks:
                h.remove()
        return total[0]

    def _autocast(self):
        if self.amp is None:
            return torch.autocast(self.dev.type, enabled=False)
        return torch.autocast(self.dev.type, dtype=self.amp)

    def train(self, moving, fixed):
        with self._autocast():
            ddf, warped = self.forward(self.model, moving, fixed)
        loss = self.loss_fn(fixed, warped.float(), ddf.float())  # losses in float32 (no-op without --amp)
        self.opt.zero_grad()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()

    def infer(self, moving, fixed):
        with torch.no_grad(), self._autocast():
            self.forward(self.model, moving, fixed)


def make_regbench(pkg, nd, name, channels_last=False, **kw):
    """Contender for a regbench package object (the current one or a baseline copy); ``channels_last`` is the
    opt-in fast path ``VoxelMorph(channels_last=True)``, default off."""
    vm = importlib.import_module(f"{pkg.__name__}.models.voxelmorph")
    losses = importlib.import_module(f"{pkg.__name__}.losses")
    model = vm.VoxelMorph(nd, "vm2", channels_last=True) if channels_last else vm.VoxelMorph(nd, "vm2")
    ncc = losses.LocalNCC(9)
    reg = losses.Diffusion()

    def forward(model, moving, fixed):
        out = model(moving, fixed)
        return out["ddf"], out["warped"]

    return Contender(name, model, lambda f, w, d: ncc(f, w) + reg(d), forward, **kw)


def make_peer(nd, int_steps, name="peer", **kw):
    import neurite as ne
    import voxelmorph as vxm

    args = {} if int_steps is None else {"integration_steps": int_steps}
    model = vxm.nn.models.VxmPairwise(nd, 1, 1, nb_features=PEER_FEATURES, **args)
    ncc, reg = ne.nn.modules.NCC(9), ne.nn.modules.SpatialGradient("l2")

    def forward(model, moving, fixed):
        return model(moving, fixed, return_warped_source=True)

    return Contender(name, model, lambda f, w, d: -ncc(f, w).mean() + reg(d), forward, **kw)


def time_call(fn, dev) -> float:
    _sync(dev)
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - t0


def machine_info(dev: torch.device) -> dict:
    info = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": "unknown",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(dev),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if hasattr(os, "sched_getaffinity"):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    for dist in ("voxelmorph", "neurite"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = "not installed"
    if dev.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    try:
        root = Path(__file__).resolve().parents[1]
        info["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src/regbench/spatial.py",
                                "src/regbench/losses.py", "src/regbench/models"],
                               capture_output=True, text=True).stdout.strip()
        info["git_dirty_model_code"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = "unknown"
    return info


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def parse_size(s: str) -> tuple[int, ...]:
    shape = tuple(int(x) for x in s.lower().split("x"))
    if len(shape) not in (2, 3) or any(n % 32 for n in shape):
        raise argparse.ArgumentTypeError(f"size {s!r}: need 2 or 3 sizes, each divisible by 32 (peer U-Net)")
    return shape


def profile_contenders(contenders, moving, fixed, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if moving.is_cuda else [])
    out = []
    for c in contenders:
        c.train(moving, fixed)
        with profile(activities=acts, record_shapes=True) as prof:
            c.train(moving, fixed)
        key = "self_cuda_time_total" if moving.is_cuda else "self_cpu_time_total"
        out.append(f"### {c.name} (one train step)\n\n```\n"
                   + prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=rows,
                                                                        max_name_column_width=36,
                                                                        max_shapes_column_width=70)
                   + "\n```\n")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256x256,96x128x96", help="comma-separated, e.g. 256x256,96x128x96")
    p.add_argument("--repeats", default="9",
                   help="interleaved timed rounds per size: one number, or one per size (comma-separated)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per size")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--amp", default="off",
                   help="comma-separated mixed-precision modes to run, each a separate set of rows: off, "
                        "bfloat16, float16 (torch.autocast around the forward; losses in float32)")
    p.add_argument("--peer-int-steps", type=int, default=None,
                   help="VxmPairwise integration_steps (default: its own default, 5)")
    p.add_argument("--peer-int0", action="store_true",
                   help="also time the peer without integration (integration_steps=0, like regbench's default)")
    p.add_argument("--baseline-src", default=None, help="also time regbench imported from this src dir")
    p.add_argument("--fast", action="store_true", help="also time regbench's opt-in fast (non-identical) paths")
    p.add_argument("--only", default=None, help="comma-separated contenders to keep (regbench,peer,...)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table per contender and exit")
    p.add_argument("--out", default="bench/results/voxelmorph_speed", help="output stem (.md and .tsv)")
    p.add_argument("--no-write", action="store_true", help="print only")
    a = p.parse_args(argv)

    import regbench

    torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if a.device == "auto" else a.device))
    amp_modes = {"off": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    modes = [m.strip() for m in a.amp.split(",")]
    bad = [m for m in modes if m not in amp_modes]
    if bad:
        p.error(f"unknown --amp mode(s) {bad}; use {sorted(amp_modes)}")
    base = load_regbench_from(a.baseline_src) if a.baseline_src else None
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    reps = [int(r) for r in str(a.repeats).split(",")]
    if len(reps) not in (1, len(sizes)):
        p.error(f"--repeats: give one number or one per size ({len(sizes)})")
    repeats = dict(zip(sizes, reps * len(sizes) if len(reps) == 1 else reps))
    info = machine_info(dev)
    info["load_before"] = _load()
    rows, params = [], {}
    print("size\tamp\tphase\tcontender\tmedian_s\tmin_s\tratio_to_peer\tpaired_ratio", flush=True)
    for shape, mode in [(s, m) for s in sizes for m in modes]:
        nd = len(shape)
        torch.manual_seed(0)
        kw = {"dev": dev, "amp": amp_modes[mode]}
        cs = [make_regbench(regbench, nd, "regbench", **kw), make_peer(nd, a.peer_int_steps, **kw)]
        if a.peer_int0:
            cs.append(make_peer(nd, 0, name="peer(int_steps=0)", **kw))
        if base is not None:
            cs.append(make_regbench(base, nd, "baseline", **kw))
        if a.fast:
            cs.append(make_regbench(regbench, nd, "fast:channels_last", channels_last=True, **kw))
        if a.only:
            keep = set(a.only.split(","))
            cs = [c for c in cs if c.name in keep]
        fixed, moving = smooth_pair(shape, dev)
        label = "x".join(map(str, shape))
        for c in cs:
            macs = c.conv_macs(moving, fixed)
            params[(label, c.name)] = (c.params(), macs, macs / fixed[0, 0].numel())
        if a.profile:
            print(f"## {label}, amp {mode}\n\n" + profile_contenders(cs, moving, fixed))
            continue
        for r in range(a.warmup + repeats[shape]):
            k = r % len(cs)
            for c in cs[k:] + cs[:k]:
                tt = time_call(lambda: c.train(moving, fixed), dev)
                ti = time_call(lambda: c.infer(moving, fixed), dev)
                if r >= a.warmup:
                    c.times["train"].append(tt)
                    c.times["infer"].append(ti)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        peer = next((c for c in cs if c.name == "peer"), None)
        for phase in ("train", "infer"):
            ref = statistics.median(peer.times[phase]) if peer else float("nan")
            for c in cs:
                med, mn = statistics.median(c.times[phase]), min(c.times[phase])
                paired = (statistics.median(t / p for t, p in zip(c.times[phase], peer.times[phase]))
                          if peer else float("nan"))
                row = {"size": label, "ndim": nd, "phase": phase, "contender": c.name, "median_s": med,
                       "min_s": mn, "ratio_to_peer": med / ref, "paired_ratio": paired, "repeats": repeats[shape],
                       "device": dev.type,
                       "amp": mode, "threads": a.threads, "params": c.params(), "load_1min": load,
                       "samples_s": ",".join(f"{t:.5f}" for t in c.times[phase])}
                rows.append(row)
                print(f"{label}\t{mode}\t{phase}\t{c.name}\t{med:.4f}\t{mn:.4f}\t{med / ref:.3f}\t{paired:.3f}", flush=True)
    if a.profile:
        return 0
    info["load_after"] = _load()
    if not a.no_write:
        write_results(Path(a.out), rows, params, info, a)
    return 0


def write_results(out: Path, rows, params, info, a) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cols = ["size", "ndim", "phase", "contender", "median_s", "min_s", "ratio_to_peer", "paired_ratio", "repeats",
            "device",
            "amp", "threads", "params", "load_1min", "samples_s"]
    lines = ["\t".join(cols)]
    for r in rows:
        lines.append("\t".join(f"{r[c]:.5f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    out.with_suffix(".tsv").write_text("\n".join(lines) + "\n")

    md = out.with_suffix(".md")
    notes = ""
    if md.exists():
        old = md.read_text()
        if NOTES_MARK in old:
            notes = old.split(NOTES_MARK, 1)[1]
    peer_int = "5 (its default)" if a.peer_int_steps is None else str(a.peer_int_steps)
    txt = [
        "# VoxelMorph speed: regbench vs voxelmorph 0.3.4",
        "",
        "Written by `python bench/bench_voxelmorph.py " + " ".join(sys.argv[1:]) + "`; do not edit above the "
        "notes mark (the script rewrites it).",
        "",
        f"Device {info['device']}, {a.threads} threads, batch 1, interleaved timed rounds per size in column n "
        f"(after {a.warmup} warm-up rounds). Mixed precision (column amp): `torch.autocast` around the forward, losses in "
        "float32; `off` = float32 throughout. "
        f"Peer: `VxmPairwise(nb_features={PEER_FEATURES})`, integration_steps {peer_int}, "
        "losses `-neurite NCC(9)` + `SpatialGradient('l2')`. regbench: `VoxelMorph(variant='vm2')` "
        "(int_steps 0), `LocalNCC(9)` + `Diffusion()`. Seconds per call (median, min); ratio to peer = median / "
        "peer median; paired ratio = median over rounds of (time / peer time in the same round); load = 1-minute "
        "load average when the size finished (this machine has 2 cores; above 2, other processes competed).",
        "",
        "| size | amp | phase | contender | n | median s | min s | ratio to peer | paired ratio | load |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        txt.append(f"| {r['size']} | {r['amp']} | {r['phase']} | {r['contender']} | {r['repeats']} | "
                   f"{r['median_s']:.4f} | {r['min_s']:.4f} | {r['ratio_to_peer']:.3f} | {r['paired_ratio']:.3f} | "
                   f"{r['load_1min']:.1f} |")
    txt += ["", "Parameters and convolution work (multiply-accumulates of one forward, batch 1):", "",
            "| size | contender | parameters | conv GMAC | conv MAC per voxel |",
            "|---|---|---:|---:|---:|"]
    for (label, name), (n, macs, per_voxel) in params.items():
        txt.append(f"| {label} | {name} | {n:,} | {macs / 1e9:.2f} | {per_voxel:,.0f} |")
    txt += ["", "Machine:", ""]
    txt += [f"- {k}: {v}" for k, v in info.items()]
    txt += ["", NOTES_MARK]
    md.write_text("\n".join(txt) + (notes if notes else "\n"))
    print(f"wrote {md} and {out.with_suffix('.tsv')}")


if __name__ == "__main__":
    sys.exit(main())
