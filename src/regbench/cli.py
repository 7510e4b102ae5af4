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
    elif kind == "liver":
        from .datasets.liver_prep import build_liver

        build_liver(Path(a.raw), Path(a.out), spec.get("params", {}), int(spec["seed"]), spec["dataset"])
    elif kind == "brats":
        from .datasets.brats import build_brats

        build_brats(Path(a.raw), Path(a.out), spec.get("params", {}), int(spec["seed"]), spec["dataset"])
    elif kind == "mmwhs":
        from .datasets.ding_prep import build_mmwhs

        build_mmwhs(Path(a.raw), Path(a.out), spec.get("params", {}), int(spec["seed"]), spec["dataset"])
    elif kind == "chaos":
        from .datasets.ding_prep import build_chaos

        build_chaos(Path(a.raw), Path(a.out), spec.get("params", {}), int(spec["seed"]), spec["dataset"])
    elif kind == "carotid":
        from .datasets.carotid import build_carotid

        build_carotid(Path(a.raw), Path(a.out), spec.get("params", {}), int(spec["seed"]), spec["dataset"])
    else:  # the schema admits only implemented readers; this guards direct CLI use
        raise RegbenchError(f"no preprocessing reader {kind!r} (implemented: demo, chestxray, brain, liver, brats, "
                            "mmwhs, chaos, carotid)")


def cmd_train(a: argparse.Namespace) -> None:
    from .train import train

    s = _spec(a.spec)
    train(a.prep, a.out, s["method"], int(a.fold), int(s["seed"]), s["modality"], [int(x) for x in s["labels"]],
          device=s.get("device", "auto"), max_steps=s.get("max_steps"), seg=s.get("seg", "seg"),
          attention_path=a.attention, autoencoder_path=a.autoencoder, components=_components(a.component),
          moving_seg=s.get("moving_seg"), run_dir=a.run_dir)


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
                    [int(x) for x in s["labels"]], device=s.get("device", "auto"), max_steps=s.get("max_steps"),
                    run_dir=a.run_dir)


def cmd_link_run(a: argparse.Namespace) -> None:
    from .store import link_run

    link_run(a.src, a.dst, a.name)


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
                   seg=s.get("seg", "seg"), attention_path=a.attention, method_max_pairs=s.get("method_max_pairs"),
                   moving_seg=s.get("moving_seg"))


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
    out_dir = Path(a.out_dir) if a.out_dir else Path("results") / exp["experiment"]
    metrics = [Path(p) for p in a.metrics] or sorted(out_dir.glob("metrics/*/*/fold*.tsv"))
    aux = [Path(p) for p in a.aux_metrics or []] or sorted(out_dir.glob("aux/*/*/fold*.tsv"))
    render_experiment(exp, metrics, out_dir, aux_metrics_paths=aux)


def cmd_register_images(a: argparse.Namespace) -> None:
    """Register a user's pair; write warped image/labels, the field (ITK mm LPS and regbench voxels), metrics."""
    from .enduser import format_summary, register_images

    try:
        params = json.loads(a.params) if a.params else {}
    except json.JSONDecodeError as exc:
        raise RegbenchError(f"--params is not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise RegbenchError("--params must be a JSON object of keyword arguments")
    summary = register_images(
        a.fixed, a.moving, a.method, a.out, fixed_labels_path=a.fixed_labels, moving_labels_path=a.moving_labels,
        labels=a.labels, params=params, model_path=a.model, inference_size=a.inference_size,
        attention_path=a.attention, intensity=a.intensity, device=a.device, seed=a.seed,
        resample_moving=a.resample_moving)
    print(format_summary(summary, summary["outputs"]["metrics"]))


def cmd_store_paths(a: argparse.Namespace) -> None:
    from .config import load_experiments
    from .datasets.registry import load_yaml
    from .store import RunStore

    exps = load_experiments(load_yaml(a.config))
    names = [a.experiment] if a.experiment else list(exps)
    s = RunStore(exps)
    for p in sorted({p for n in names for p in s.paths_of(n)}):
        print(p)


def cmd_results_index(a: argparse.Namespace) -> None:
    from .report.front import write_results_index

    print(f"wrote {write_results_index(a.catalogue, a.results)}")


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
    s.add_argument("--run-dir", default=None,
                   help="folder of checkpoint.pt shared by this network's step budgets (default: --out)")
    s = stage("register", cmd_register, "register the test pairs of one fold")
    s.add_argument("--model", default=None, help="model.pt of a learned method")
    s.add_argument("--attention", default=None, help="model.pt of the attention segmenter")
    s = stage("train-aux", cmd_train_aux, "train an auxiliary network (segmenter, auto-encoder) on one fold")
    s.add_argument("--run-dir", default=None,
                   help="folder of checkpoint.pt shared by this network's step budgets (default: --out)")
    s = sub.add_parser("link-run", help="make a trained network of the store (work/models/<key>/<budget>) visible at "
                                        "an experiment's path (hard links, its own train_info.json)")
    s.add_argument("--src", required=True, help="the store folder: work/models/<key>/<budget>")
    s.add_argument("--dst", required=True, help="the experiment's folder: work/<exp>/models/<dataset>/<method>/fold<k>")
    s.add_argument("--name", default=None, help="the method (or auxiliary) name recorded in train_info.json")
    s.set_defaults(func=cmd_link_run)
    s = stage("evaluate-aux", cmd_evaluate_aux, "score an auxiliary network on the test cases of one fold")
    s.add_argument("--model", required=True)
    s = stage("evaluate", cmd_evaluate, "metrics of one (dataset, method, fold)")
    s.add_argument("--reg", required=True)

    s = sub.add_parser("report", help="render an experiment's tables and figures from its metrics TSVs")
    s.add_argument("--spec", default=None, help="JSON experiment config (what the Snakemake rule passes)")
    s.add_argument("--config", default=None, help="experiment YAML (e.g. config/demo.yaml), instead of --spec")
    s.add_argument("--out-dir", default=None, help="default: results/<experiment name> (where the pipeline writes it)")
    s.add_argument("metrics", nargs="*", help="metrics TSVs (default: <out-dir>/metrics/*/*/fold*.tsv)")
    s.add_argument("--aux-metrics", nargs="+", action="extend", default=None, metavar="P",
                   help="aux metrics TSVs of the auxiliary networks, for report.tables items with `auxiliary` "
                        "(default: <out-dir>/aux/*/*/fold*.tsv); end the list with `--` or put it after the metrics TSVs")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("store-paths", help="print the network store paths (run folders, logs, benchmarks, training "
                                           "data) an experiment's networks occupy, one per line")
    s.add_argument("--config", required=True, help="experiment file, or a file listing experiments")
    s.add_argument("--experiment", default=None, help="only this experiment (default: every one in --config)")
    s.set_defaults(func=cmd_store_paths)

    s = sub.add_parser("results-index", help="write results/README.md: every paper's tables and figures, "
                                             "their protocol and the gap to the paper")
    s.add_argument("--catalogue", default="config/results_index.yaml")
    s.add_argument("--results", default="results")
    s.set_defaults(func=cmd_results_index)

    s = sub.add_parser(
        "register-images", help="register your own fixed/moving NIfTI pair (ANTs/ITK field, warped labels, metrics)",
        description="Register MOVING to FIXED with a classical method or a trained network of the pipeline. Writes "
                    "<out>_warped.nii.gz, <out>_field_itk.nii.gz (displacement in mm, LPS: antsApplyTransforms -t, "
                    "ITK-SNAP, SimpleITK DisplacementFieldTransform), <out>_ddf.nii.gz (regbench voxels), and with "
                    "label maps <out>_warped_labels.nii.gz and DSC/HD95/ASSD per label in <out>_metrics.tsv; folding "
                    "and runtime always (see regbench.enduser).")
    s.add_argument("--fixed", required=True, help="fixed image (NIfTI); every output is on its grid")
    s.add_argument("--moving", required=True, help="moving image (NIfTI), on the fixed grid unless --resample-moving")
    s.add_argument("--fixed-labels", default=None, help="label map of the fixed image (integers, its grid)")
    s.add_argument("--moving-labels", default=None, help="label map of the moving image, warped nearest-neighbour")
    s.add_argument("--labels", type=int, nargs="+", default=None,
                   help="label values to score (default: every non-zero value of either map)")
    s.add_argument("--method", required=True,
                   help="a classical transform (identity, ants_affine, ants_syn, elastix) or any name with --model")
    s.add_argument("--model", default=None,
                   help="a trained network: work/<exp>/models/<dataset>/<method>/fold<k>/model.pt")
    s.add_argument("--params", default=None,
                   help="JSON keyword arguments of the classical method, e.g. "
                        '\'{"syn_metric": "CC", "syn_sampling": 2}\'')
    s.add_argument("--inference-size", type=int, nargs="+", default=None,
                   help="learned model: predict on this grid instead of its training grid (e.g. 64 64)")
    s.add_argument("--intensity", default="auto", choices=["auto", "minmax", "none"],
                   help="learned model: scale inputs to [0, 1] as the pipeline's readers do "
                        "(auto: images outside [0, 1]; minmax: always; none)")
    s.add_argument("--attention", default=None, help="learned model: attention segmenter model.pt (He et al. 2022)")
    s.add_argument("--resample-moving", action="store_true",
                   help="resample a moving image (and labels) that is not on the fixed grid onto it first")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output prefix, e.g. out/pair -> out/pair_warped.nii.gz, ...")
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
