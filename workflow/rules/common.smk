# Shared helpers: the validated experiments and the target lists derived from them.
import json
import os
import re
import shlex

from regbench.config import evaluated_datasets, load_experiments, method_components, methods_for, report_rule
from regbench.report.budget import input_files as budget_input_files
from regbench import store as _store

EXPERIMENTS = load_experiments(config)
# every trained network of the loaded experiments, addressed by its training spec (work/models/<key>/<budget>):
# experiments that train the same network share one train job (src/regbench/store.py)
STORE = _store.RunStore(EXPERIMENTS)


# experiment: only the loaded ones, so another experiment's committed results (read by a budget series) are
# source files rather than outputs of rules whose config is not loaded
wildcard_constraints:
    experiment="|".join(sorted(EXPERIMENTS, key=len, reverse=True)),
    dataset=r"[a-z0-9_]+",
    method=r"[a-z0-9_]+",
    aux=r"[a-z0-9_]+",
    fold=r"\d+",
    key=r"[0-9a-f]{12}",
    pid=r"[0-9a-f]{12}",
    budget=r"(steps|epochs)[0-9]+(_max[0-9]+)?",


def train_threads(default=8):
    """Threads of a training job: all of `--cores` where it is given (a local run: one training job takes the
    machine, as Snakemake caps threads at --cores), else `default` (a cluster run, where `--cores` is not given and
    `set-threads` in the profile decides; also `--unlock`, which must not need --cores). `workflow.cores` itself
    raises without --cores, which broke `snakemake --unlock` and the SLURM profile."""
    return workflow.resource_settings.cores or default


# the dataset whose trained models register dataset d: `datasets.<d>.models_from` (e.g. IXI registered with the
# networks trained on Mindboggle-101, Zhu et al. 2021 Sec. 3.E), else d itself
model_dataset = _store.model_dataset


def exp(w):
    return EXPERIMENTS[w.experiment]


def method_cfg(w):
    return exp(w)["methods"][w.method]


def method_pairs_cap(w):
    """``{"method_max_pairs": n}`` where ``scale.method_max_test_pairs`` caps this method (on this dataset)."""
    cap = (exp(w)["scale"].get("method_max_test_pairs") or {}).get(w.method)
    if isinstance(cap, dict):
        cap = cap.get(w.dataset)
    return {"method_max_pairs": cap} if cap else {}


def dataset_cfg(w):
    return exp(w)["datasets"][w.dataset]


def moving_seg_spec(w, train):
    """`{"moving_seg": column}` when the dataset's moving-side label column differs from its label column of both
    sides; nothing otherwise (regbench.store.moving_seg_spec)."""
    return _store.moving_seg_spec(exp(w), w.dataset, train)


def jobs(e):
    """(dataset, method, fold) triples of experiment e's test registrations (no `train_only` dataset: its
    networks are trained as inputs of the datasets whose `models_from` names it)."""
    return [
        (d, m, f)
        for d in evaluated_datasets(e)
        for m in methods_for(e, d)
        for f in e["datasets"][d]["folds"]
    ]


def report_outputs(name):
    from regbench.report.extras import extra_outputs, main_outputs

    e = EXPERIMENTS[name]
    return [f"results/{name}/{f}" for f in main_outputs(e) + extra_outputs(e)]


def paper_of(name):
    """The paper an experiment reproduces, for the report's categories: `he2022/studies/steps_1000` -> "He et al. 2022";
    the demo experiments (synthetic data) -> "Demo (synthetic, not a paper)"."""
    m = re.match(r"([a-z]+)(\d{4})", name)
    if m:
        return f"{m.group(1).capitalize()} et al. {m.group(2)}"
    return "Demo (synthetic, not a paper)" if name.startswith("demo") else name


def report_items(name):
    """report_outputs(name), with every table's CSV (its Markdown where it has no CSV output) and every figure's
    PNG flagged for `snakemake --report`: category = the paper, subcategory = the table or figure (`table`,
    `fig8_ssim`, ...), labels = experiment, datasets and kind. The other versions stay plain outputs."""
    e = EXPERIMENTS[name]
    paths = report_outputs(name)
    out = []
    for p in paths:
        stem, ext = os.path.splitext(os.path.basename(p))
        if ext in (".csv", ".png") or (ext == ".md" and p[:-3] + ".csv" not in paths):
            labels = {"experiment": name, "datasets": ", ".join(e["datasets"]),
                      "kind": "figure" if ext == ".png" else "table"}
            p = report(p, caption="../report/item.rst", category=paper_of(name), subcategory=stem, labels=labels)
        out.append(p)
    return out


def aux_jobs(e):
    """(dataset, auxiliary id, fold) triples of experiment e: every auxiliary network on every dataset."""
    return [(d, a, f) for d in evaluated_datasets(e) for a in e.get("auxiliary", {}) for f in e["datasets"][d]["folds"]]


def aux_model(w, aux_id):
    return f"work/{w.experiment}/aux/{w.dataset}/{aux_id}/fold{w.fold}/model.pt"


def store_run(w, kind):
    """The store run (regbench.store.Run) at work/<kind>/<key>/<budget>."""
    try:
        return STORE.get(kind, w.key, w.budget)
    except KeyError:
        raise ValueError(f"work/{kind}/{w.key}/{w.budget}: no loaded experiment trains this network") from None


def store_train_inputs(w, kind):
    """Inputs of a store training job: its training data (data/prep_train/<pid>), the frozen networks it reads, and the next
    smaller budget of the same network (this job resumes from that one's checkpoint)."""
    run = store_run(w, kind)
    prep = STORE.prep_dir(run)
    inputs = {"cases": f"{prep}/cases.tsv", "pairs": f"{prep}/pairs.tsv", **run.inputs}
    prev = STORE.previous(run)
    if prev is not None:
        inputs["previous_budget"] = prev.model
    return inputs


def experiment_run(w, kind):
    """The store run behind work/<experiment>/<kind>/<dataset>/<id>/fold<k>: an auxiliary network, or a learned
    method that trains (not a `model_from` one)."""
    if kind == "aux":
        if w.aux not in exp(w).get("auxiliary", {}):
            raise ValueError(f"experiment {w.experiment}: no auxiliary network {w.aux!r}")
        return STORE.aux(w.experiment, w.dataset, w.aux, int(w.fold))
    m = exp(w)["methods"].get(w.method)
    if m is None or m["kind"] != "learned" or m.get("model_from"):
        raise ValueError(f"experiment {w.experiment}: {w.method!r} is not a learned method that trains")
    return STORE.model(w.experiment, w.dataset, w.method, int(w.fold))


def aux_args(input, keys):
    """`--attention P --model P` for the models among a rule's inputs, and `--component ROLE=P` for each
    `component_<role>` input."""
    args = [f"--{k} {input[k]}" for k in keys if k in input.keys()]
    args += [f"--component {k[len('component_'):]}={input[k]}" for k in input.keys() if k.startswith("component_")]
    return " ".join(args)


def all_report_outputs():
    return [p for name in EXPERIMENTS for p in report_outputs(name)]


def fixed_column(modality):
    """The fixed image's cases.tsv column of a dataset's `modality` (a column, or {fixed, moving})."""
    return modality if isinstance(modality, str) else modality["fixed"]


def spec_json(obj):
    return json.dumps(obj, sort_keys=True)


# the registry id whose download dataset d is prepared from: `datasets.<d>.raw`, else d itself (several prepared
# datasets may share one download, e.g. CHAOS T1 -> CT and T2 -> CT, Ding et al. 2021)
raw_of = _store.raw_of


def local_path_arg(raw):
    """`--local-path P` when an experiment sets `local_path` on a dataset prepared from download `raw`, else
    nothing."""
    for e in EXPERIMENTS.values():
        for d, dcfg in e["datasets"].items():
            if raw_of(e, d) == raw and dcfg.get("local_path"):
                return f"--local-path {shlex.quote(dcfg['local_path'])}"
    return ""


def register_inputs(w):
    inputs = {
        "cases": f"data/prep/{w.experiment}/{w.dataset}/cases.tsv",
        "pairs": f"data/prep/{w.experiment}/{w.dataset}/pairs.tsv",
    }
    if method_cfg(w)["kind"] == "learned":
        trained_on = model_dataset(exp(w), w.dataset)
        owner = method_cfg(w).get("model_from") or w.method  # a method may reuse another method's weights
        inputs["model"] = f"work/{w.experiment}/models/{trained_on}/{owner}/fold{w.fold}/model.pt"
    if method_cfg(w).get("attention"):
        inputs["attention"] = aux_model(w, method_cfg(w)["attention"])
    return inputs


def train_info(name, dataset, method, fold):
    return f"work/{name}/models/{dataset}/{method}/fold{fold}/train_info.json"


def report_inputs(name):
    """Inputs of experiment `name`'s report: metrics, registration tables, training infos, aux metrics."""
    e = EXPERIMENTS[name]
    metrics = [f"results/{name}/metrics/{d}/{m}/fold{f}.tsv" for d, m, f in jobs(e)]
    regs = [f"work/{name}/reg/{d}/{m}/fold{f}/pairs.tsv" for d, m, f in jobs(e)]
    infos = sorted({train_info(name, model_dataset(e, d), e["methods"][m].get("model_from") or m, f)
                    for d, m, f in jobs(e) if e["methods"][m]["kind"] == "learned"})
    aux = [f"results/{name}/aux/{d}/{a}/fold{f}.tsv" for d, a, f in aux_jobs(e)]
    aux_infos = [f"work/{name}/aux/{d}/{a}/fold{f}/train_info.json" for d, a, f in aux_jobs(e)]
    # report.budget_series: other experiments' metrics (built in this run if they are loaded, else committed)
    series = budget_input_files(e)
    return {"metrics": metrics, "regs": regs, "infos": infos, "aux": aux, "aux_infos": aux_infos,
            "series": series}
