# Shared helpers: the validated experiments and the target lists derived from them.
import json

from regbench.config import load_experiments, methods_for

EXPERIMENTS = load_experiments(config)


wildcard_constraints:
    experiment=r"[a-z0-9_]+",
    dataset=r"[a-z0-9_]+",
    method=r"[a-z0-9_]+",
    fold=r"\d+",


def exp(w):
    return EXPERIMENTS[w.experiment]


def method_cfg(w):
    return exp(w)["methods"][w.method]


def dataset_cfg(w):
    return exp(w)["datasets"][w.dataset]


def jobs(e):
    """(dataset, method, fold) triples of experiment e."""
    return [
        (d, m, f)
        for d, dcfg in e["datasets"].items()
        for m in methods_for(e, d)
        for f in dcfg["folds"]
    ]


REPORT_FILES = ["table.md", "table.csv", "table.tex", "table_dsc_per_label.md", "fig_boxplots.png",
                "fig_boxplots.pdf", "fig_qualitative.png", "fig_qualitative.pdf"]


def report_outputs(name):
    return [f"results/{name}/{f}" for f in REPORT_FILES]


def all_report_outputs():
    return [p for name in EXPERIMENTS for p in report_outputs(name)]


def spec_json(obj):
    return json.dumps(obj, sort_keys=True)
