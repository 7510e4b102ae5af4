# Shared helpers: the validated experiments and the target lists derived from them.
import json
import shlex

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


def local_path_arg(dataset):
    """`--local-path P` when an experiment sets datasets.<dataset>.local_path, else nothing."""
    for e in EXPERIMENTS.values():
        p = e["datasets"].get(dataset, {}).get("local_path")
        if p:
            return f"--local-path {shlex.quote(p)}"
    return ""


def register_inputs(w):
    inputs = {
        "cases": f"data/prep/{w.experiment}/{w.dataset}/cases.tsv",
        "pairs": f"data/prep/{w.experiment}/{w.dataset}/pairs.tsv",
    }
    if method_cfg(w)["kind"] == "learned":
        inputs["model"] = f"work/{w.experiment}/models/{w.dataset}/{w.method}/fold{w.fold}/model.pt"
    return inputs


def report_inputs(w):
    e = EXPERIMENTS[w.experiment]
    metrics = [f"results/{w.experiment}/metrics/{d}/{m}/fold{f}.tsv" for d, m, f in jobs(e)]
    regs = [f"work/{w.experiment}/reg/{d}/{m}/fold{f}/pairs.tsv" for d, m, f in jobs(e)]
    infos = [f"work/{w.experiment}/models/{d}/{m}/fold{f}/train_info.json"
             for d, m, f in jobs(e) if e["methods"][m]["kind"] == "learned"]
    return {"metrics": metrics, "regs": regs, "infos": infos}
