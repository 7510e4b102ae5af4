"""Which loss term makes the gradient spikes? A diagnostic (not a test) for the chest X-ray runs.

    python bench/grad_spikes.py [--config config/papers/he2022/studies/clip.yaml] [--dataset jsrt] [--method he2022]
                                [--steps 500] [--spike 50] [--out bench/results/grad_spikes_jsrt]

Re-trains ``--method`` on the train pairs of ``--dataset`` (fold 0) for ``--steps`` steps with the experiment's
own settings (seed, auxiliary networks, loss weights, clipping) plus ``train.log_term_grad_norms``, so every
step also logs the global L2 norm of each weighted loss term's gradient alone (:func:`regbench.train.train`).
The optimisation path is the experiment's: the script checks the logged total gradient norm against the
experiment's own ``train_log.tsv`` for the same steps and prints the largest relative difference.

Needs the experiment's prepared data (``data/prep/<experiment>/<dataset>``) and auxiliary networks
(``work/<experiment>/aux/<dataset>/<aux>/fold0/model.pt``), i.e. a run of that experiment first. Uses train
pairs only. Writes ``<out>/train_log.tsv`` (per step) and ``<out>/summary.md`` (per term: median, 99th
percentile and maximum of its gradient norm over all steps and over the spike steps, where the total norm
exceeds ``--spike``, and how often the term has the largest norm at a spike step).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from regbench.config import load_experiments
from regbench.train import train
from regbench.utils import atomic_write_text


def summarise(log: pd.DataFrame, spike: float) -> pd.DataFrame:
    """Per loss term: gradient-norm statistics over all steps and over spike steps (total norm > ``spike``).

    Args:
        log: a training log with ``grad_norm`` and ``grad_norm_<term>`` columns.
        spike: total gradient norm above which a step counts as a spike.

    Returns:
        One row per term: ``median``, ``p99``, ``max`` (all steps), ``median_at_spikes`` and ``largest_at_spikes``
        (fraction of spike steps at which this term's gradient norm is the largest of all terms).

    Raises:
        ValueError: the log has no ``grad_norm_<term>`` column.
    """
    cols = [c for c in log.columns if c.startswith("grad_norm_")]
    if not cols:
        raise ValueError("training log has no grad_norm_<term> columns (train.log_term_grad_norms was off)")
    spikes = log[log["grad_norm"] > spike]
    top = spikes[cols].idxmax(axis=1) if len(spikes) else pd.Series(dtype=str)
    rows = []
    for c in cols:
        rows.append({"term": c.removeprefix("grad_norm_"), "median": log[c].median(),
                     "p99": log[c].quantile(0.99), "max": log[c].max(),
                     "median_at_spikes": spikes[c].median() if len(spikes) else float("nan"),
                     "largest_at_spikes": float((top == c).mean()) if len(spikes) else float("nan")})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/papers/he2022/studies/clip.yaml")
    p.add_argument("--dataset", default="jsrt")
    p.add_argument("--method", default="he2022")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--spike", type=float, default=50.0, help="total gradient norm above which a step is a spike")
    p.add_argument("--out", default=None, help="default: bench/results/grad_spikes_<dataset>")
    a = p.parse_args(argv)

    (name, exp), = load_experiments(yaml.safe_load(Path(a.config).read_text())).items()
    method = exp["methods"][a.method]
    method = {**method, "train": {**method["train"], "log_term_grad_norms": True}}
    dcfg = exp["datasets"][a.dataset]
    aux = {k: f"work/{name}/aux/{a.dataset}/{method[k]}/fold0/model.pt" for k in ("attention", "autoencoder")
           if method.get(k)}
    out = Path(a.out or f"bench/results/grad_spikes_{a.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="grad_spikes_") as tmp:
        train(f"data/prep/{name}/{a.dataset}", tmp, method, fold=0, seed=exp["seed"],
              modality=dcfg["train_modality"], labels=sorted(dcfg["labels"]), device=exp["device"],
              max_steps=a.steps, seg=dcfg["train_seg"], attention_path=aux.get("attention"),
              autoencoder_path=aux.get("autoencoder"))
        log = pd.read_csv(Path(tmp) / "train_log.tsv", sep="\t")
    log.to_csv(out / "train_log.tsv", sep="\t", index=False)

    ref_path = Path(f"work/{name}/models/{a.dataset}/{a.method}/fold0/train_log.tsv")
    check = "no reference log"
    if ref_path.exists():
        ref = pd.read_csv(ref_path, sep="\t").set_index("step")["grad_norm"]
        both = log.set_index("step")["grad_norm"].to_frame("here").join(ref.rename("ref"), how="inner")
        rel = ((both["here"] - both["ref"]).abs() / both["ref"].abs().clip(lower=1e-12)).max()
        check = f"{len(both)} steps compared with {ref_path}: max relative difference of the total norm {rel:.2e}"
    summary = summarise(log, a.spike)
    n_spikes = int((log["grad_norm"] > a.spike).sum())
    text = "\n".join([
        f"# Gradient norm per loss term: {name}, {a.dataset}, {method['name']}, steps 1-{len(log)}",
        "",
        summary.to_markdown(index=False, floatfmt=".3g"),
        "",
        f"- Total gradient norm before clipping: median {log['grad_norm'].median():.3g}, "
        f"max {log['grad_norm'].max():.4g}; {n_spikes} spike steps (total > {a.spike:g}).",
        "- Each term's norm is that of its weighted gradient alone; norms of a sum are not additive.",
        f"- Trajectory check: {check}.",
        f"- Command: `python bench/grad_spikes.py --config {a.config} --dataset {a.dataset} --method {a.method} "
        f"--steps {a.steps} --spike {a.spike:g}` (train pairs only).",
        "",
    ])
    atomic_write_text(out / "summary.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
