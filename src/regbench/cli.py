"""Command-line entry point ``regbench`` (also ``python -m regbench``): one subcommand per pipeline stage.

Snakemake rules call these subcommands with a JSON ``--spec`` holding the validated slice of the config
that the stage needs, so that a change to one method's settings re-runs only that method's jobs.
End users register their own images with ``regbench register-images``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import RegbenchError
from .utils import get_logger

log = get_logger("regbench")


def _spec(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegbenchError(f"--spec is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise RegbenchError("--spec must be a JSON object")
    return value


def cmd_fetch(a: argparse.Namespace) -> None:
    from .datasets.fetch import fetch_dataset
    from .datasets.registry import load_registry

    registry = load_registry(a.registry)
    fetch_dataset(a.dataset, registry, Path(a.raw_root), local_path=a.local_path)


def cmd_preprocess(a: argparse.Namespace) -> None:
    spec = _spec(a.spec)
    kind = spec["preprocess"]
    if kind == "demo":
        from .datasets.demo import build_demo

        build_demo(Path(a.raw), Path(a.out), spec.get("params", {}), int(spec["seed"]))
    elif kind == "chestxray":
        from .datasets.chestxray import build_chestxray

        build_chestxray(Path(a.raw), Path(a.out), spec.get("params", {}), int(spec["seed"]), spec["dataset"])
    elif kind == "brain":
        from .datasets.brain import build_brain

        build_brain(Path(a.raw), Path(a.out), spec.get("params", {}), int(spec["seed"]), spec["dataset"])
    else:  # the schema admits only implemented readers; this guards direct CLI use
        raise RegbenchError(f"no preprocessing reader {kind!r} (implemented: demo, chestxray, brain)")


def cmd_train(a: argparse.Namespace) -> None:
    from .train import train

    s = _spec(a.spec)
    train(a.prep, a.out, s["method"], int(a.fold), int(s["seed"]), s["modality"], [int(x) for x in s["labels"]],
          device=s.get("device", "auto"), max_steps=s.get("max_steps"), seg=s.get("seg", "seg"),
          attention_path=a.attention, autoencoder_path=a.autoencoder, components=_components(a.component))


def _components(items: list[str] | None) -> dict[str, str]:
    """``--component role=path`` arguments as ``{role: path}``."""
    out = {}
    for item in items or []:
        role, sep, path = item.partition("=")
        if not sep or not role or not path:
            raise RegbenchError(f"--component {item!r}: expected ROLE=PATH (e.g. autoencoder=work/.../model.pt)")
        out[role] = path
    return out


def cmd_train_aux(a: argparse.Namespace) -> None:
    from .auxiliary import train_auxiliary

    s = _spec(a.spec)
    train_auxiliary(a.prep, a.out, s["aux"], int(a.fold), int(s["seed"]), s["modality"], s["seg"],
                    [int(x) for x in s["labels"]], device=s.get("device", "auto"), max_steps=s.get("max_steps"))


def cmd_evaluate_aux(a: argparse.Namespace) -> None:
    from .auxiliary import evaluate_auxiliary

    s = _spec(a.spec)
    evaluate_auxiliary(a.prep, a.model, a.out, s["dataset"], s["aux_id"], s["aux_name"], int(a.fold),
                       s["modality"], s["seg"], s["train_seg"], device=s.get("device", "auto"))


def cmd_register(a: argparse.Namespace) -> None:
    from .register import register_pairs

    s = _spec(a.spec)
    register_pairs(a.prep, a.out, s["method"], int(a.fold), int(s["seed"]), s["modality"],
                   device=s.get("device", "auto"), model_path=a.model, max_pairs=s.get("max_pairs"),
                   seg=s.get("seg", "seg"), attention_path=a.attention)


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .evaluate import evaluate_method

    s = _spec(a.spec)
    labels = {int(k): v for k, v in s["labels"].items()}
    evaluate_method(a.prep, a.reg, a.out, s["dataset"], s["method_id"], s["method_name"], int(a.fold), labels,
                    s["modality"], unit=s.get("unit", "mm"), seg=s.get("seg", "seg"))


def cmd_report(a: argparse.Namespace) -> None:
    from .config import load_experiments
    from .datasets.registry import load_yaml
    from .report.experiment import render_experiment

    if a.spec:
        exp = _spec(a.spec)
    elif a.config:
        exps = load_experiments(load_yaml(a.config))
        if len(exps) != 1:
            raise RegbenchError(f"{a.config}: holds {len(exps)} experiments; pass an experiment file")
        exp = next(iter(exps.values()))
    else:
        raise RegbenchError("report needs --spec JSON or --config experiment.yaml")
    metrics = [Path(p) for p in a.metrics] or sorted(Path(a.out_dir).glob("metrics/*/*/fold*.tsv"))
    aux = [Path(p) for p in a.aux_metrics or []] or sorted(Path(a.out_dir).glob("aux/*/*/fold*.tsv"))
    render_experiment(exp, metrics, Path(a.out_dir), aux_metrics_paths=aux)


def cmd_register_images(a: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from . import classical, spatial
    from .io import check_same_grid, load_image, save_ddf, save_image

    fixed, moving = load_image(a.fixed), load_image(a.moving)
    check_same_grid(fixed, moving)
    if a.method in classical.TRANSFORMS:
        params = json.loads(a.params) if a.params else {}
        ddf, runtime = classical.register(fixed.array, moving.array, fixed.spacing, a.method, params, seed=a.seed)
    else:
        from .auxiliary import load_auxiliary
        from .register import timed_forward
        from .train import load_trained
        from .utils import select_device

        if not a.model:
            raise RegbenchError(f"--method {a.method!r} is not classical {classical.TRANSFORMS}; give --model")
        dev = select_device(a.device)
        model = load_trained(a.model, dev)
        f = torch.from_numpy(fixed.array)[None, None].to(dev)
        m = torch.from_numpy(moving.array)[None, None].to(dev)
        attention = load_auxiliary(a.attention, dev) if a.attention else None
        ddf_t, runtime, _ = timed_forward(model, m, f, dev, a.inference_size, attention)
        ddf = ddf_t[0].float().cpu().numpy()
    warped = spatial.warp(torch.from_numpy(moving.array)[None, None], torch.from_numpy(ddf)[None])[0, 0].numpy()
    save_ddf(f"{a.out}_ddf.nii.gz", ddf, fixed.affine)
    save_image(f"{a.out}_warped.nii.gz", warped.astype(np.float32), fixed.affine)
    log.info("wrote %s_ddf.nii.gz (voxels, fixed grid) and %s_warped.nii.gz in %.2f s", a.out, a.out, runtime)


def build_parser() -> argparse.ArgumentParser:
    """The ``regbench`` argument parser (one subparser per stage)."""
    p = argparse.ArgumentParser(prog="regbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("fetch", help="download/ingest and verify a dataset into data/raw/<dataset>")
    s.add_argument("dataset")
    s.add_argument("--registry", default="config/datasets.yaml")
    s.add_argument("--raw-root", default="data/raw")
    s.add_argument("--local-path", default=None, help="a pre-downloaded archive or folder to ingest")
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("preprocess", help="build data/prep/<experiment>/<dataset> (cases.tsv, pairs.tsv)")
    s.add_argument("--raw", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--spec", required=True, help="JSON: the dataset's config block plus seed")
    s.set_defaults(func=cmd_preprocess)

    def stage(name: str, func, help_: str) -> argparse.ArgumentParser:
        """A per-(dataset, fold) stage: --prep, --out, --fold and the JSON --spec of the Snakemake rule."""
        s = sub.add_parser(name, help=help_)
        s.add_argument("--prep", required=True)
        s.add_argument("--out", required=True)
        s.add_argument("--fold", required=True, type=int)
        s.add_argument("--spec", required=True)
        s.set_defaults(func=func)
        return s

    s = stage("train", cmd_train, "train a learned method on one fold")
    s.add_argument("--autoencoder", default=None, help="model.pt of the label auto-encoder (ae term)")
    s.add_argument("--attention", default=None, help="model.pt of the attention segmenter")
    s.add_argument("--component", action="append", default=None, metavar="ROLE=PATH",
                   help="a frozen pre-trained component read by loss terms (repeatable)")
    s = stage("register", cmd_register, "register the test pairs of one fold")
    s.add_argument("--model", default=None, help="model.pt of a learned method")
    s.add_argument("--attention", default=None, help="model.pt of the attention segmenter")
    stage("train-aux", cmd_train_aux, "train an auxiliary network (segmenter, auto-encoder) on one fold")
    s = stage("evaluate-aux", cmd_evaluate_aux, "score an auxiliary network on the test cases of one fold")
    s.add_argument("--model", required=True)
    s = stage("evaluate", cmd_evaluate, "metrics of one (dataset, method, fold)")
    s.add_argument("--reg", required=True)

    s = sub.add_parser("report", help="render an experiment's tables and figures from its metrics TSVs")
    s.add_argument("--spec", default=None, help="JSON experiment config (what the Snakemake rule passes)")
    s.add_argument("--config", default=None, help="experiment YAML (e.g. config/demo.yaml), instead of --spec")
    s.add_argument("--out-dir", required=True)
    s.add_argument("metrics", nargs="*", help="metrics TSVs (default: <out-dir>/metrics/*/*/fold*.tsv)")
    s.add_argument("--aux-metrics", nargs="+", action="extend", default=None, metavar="P",
                   help="aux metrics TSVs of the auxiliary networks, for report.tables items with `auxiliary` "
                        "(default: <out-dir>/aux/*/*/fold*.tsv); end the list with `--` or put it after the metrics TSVs")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("register-images", help="register your own fixed/moving NIfTI pair")
    s.add_argument("--fixed", required=True)
    s.add_argument("--moving", required=True)
    s.add_argument("--method", required=True, help="a classical transform (identity, ants_affine, ants_syn) or any name with --model")
    s.add_argument("--model", default=None)
    s.add_argument("--params", default=None, help="JSON keyword arguments for ants.registration")
    s.add_argument("--inference-size", type=int, nargs="+", default=None,
                   help="learned model: predict on this grid and upsample the field (e.g. 64 64)")
    s.add_argument("--attention", default=None, help="learned model: attention segmenter model.pt (He et al. 2022)")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output prefix: <out>_ddf.nii.gz, <out>_warped.nii.gz")
    s.set_defaults(func=cmd_register_images)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a :class:`RegbenchError` prints its message (no traceback) and exits with status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RegbenchError as exc:
        print(f"regbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
