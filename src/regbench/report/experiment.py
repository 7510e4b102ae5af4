"""Render one experiment's outputs into ``results/<experiment>/``: the summary table, the per-label DSC
table, box plots and a qualitative panel, each with the run's provenance and scale knobs.

Files (the Snakemake ``report`` rule lists them; ``report.names`` renames the first four, e.g. ``table`` to
``table1`` where the paper calls it Table 1, :func:`regbench.report.extras.main_names`):

* ``table.{md,csv,tex}``: method x metric, mean ± std over test pairs (folds pooled per dataset), ``n_pairs``,
  a paired test (``report.paired_test``: Wilcoxon by default, or a paired t-test) of each method against ``report.reference`` on per-pair DSC, and the paper's value
  beside ours where ``report.paper_values`` has one;
* ``table_dsc_per_label.{md,csv,tex}``: DSC per anatomical label;
* ``fig_boxplots.{png,pdf}``: per-pair distributions of the report metrics;
* ``fig_qualitative.{png,pdf}``: one test pair (``report.qualitative_pair`` or the first) for every method;
* ``<name>.{md,csv,tex}`` per ``report.tables`` item and ``<name>.{png,pdf}`` per ``report.figures`` item:
  ablation tables and figures (He et al. 2022, Tables 2-4, Figs. 8-9), see :mod:`regbench.report.extras`
  (file list: :func:`regbench.report.extras.extra_outputs`);
* ``<name>.{md,csv,tex,png,pdf}`` per ``report.budget_series`` item: test metrics vs training steps across
  experiments that differ only in their step cap, and ``<name>.{png,pdf}`` per ``report.training_curves``
  item: the learned methods' training logs, see :mod:`regbench.report.budget`.

With several datasets in one experiment, each dataset's rows are tabled separately (``table.md`` holds all
of them, one block per dataset, with a ``Dataset`` column).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import provenance
from ..config import evaluated_datasets, methods_for
from ..utils import get_logger
from . import budget, extras, figures, tables

log = get_logger(__name__)


def _notes(exp: dict[str, Any]) -> list[str]:
    notes = [f"Protocol: {' '.join(str(exp.get('protocol', '')).split())}"]
    knobs = {k: v for k, v in (exp.get("scale") or {}).items() if k != "note" and v is not None}
    if knobs or (exp.get("scale") or {}).get("note"):
        parts = [", ".join(f"{k}={v}" for k, v in knobs.items()), (exp.get("scale") or {}).get("note") or ""]
        notes.append("SCALED-DOWN RUN (not the paper protocol): " + ". ".join(p for p in parts if p))
    notes.append(tables.PAIR_STATS_NOTE)
    notes += [" ".join(str(n).split()) for n in (exp.get("report") or {}).get("notes") or []]
    return notes


def missing_runs(exp: dict[str, Any], df: Any, aux: Any = None) -> list[str]:
    """What the config asks for but the metrics lack, one entry per dataset: ``"montgomery: every row"`` or
    ``"jsrt: RCINet, GRNet"`` (method names; ``(fold k)`` where only some folds are there), then the auxiliary
    networks the same way (``"shenzhen: auxiliary Add contour loss"``). Empty when the run is complete.

    A reviewer rendering a partly run experiment from its committed metrics (``regbench report --config``,
    which reads the metrics files that exist) gets these entries under every table and in
    ``provenance.json`` (``not_yet_run``), so a table with missing rows or datasets says so.

    Args:
        exp: validated experiment config.
        df: the label-level metrics (:func:`tables.load_metrics`): columns ``dataset``, ``method``, ``fold``.
        aux: the aux metrics (:func:`tables.load_aux_metrics`: ``dataset``, ``aux``, ``fold``) or ``None``
            (auxiliary networks not checked).
    """
    have = set(zip(df["dataset"].astype(str), df["method"].astype(str), df["fold"].astype(str)))
    have_aux = (set(zip(aux["dataset"].astype(str), aux["aux"].astype(str), aux["fold"].astype(str)))
                if aux is not None else None)
    out = []
    for d in evaluated_datasets(exp):
        folds = [str(f) for f in exp["datasets"][d]["folds"]]
        expected = [(mid, exp["methods"][mid]["name"], have) for mid in methods_for(exp, d)]
        if have_aux is not None:
            expected += [(aid, f"auxiliary {a['name']}", have_aux) for aid, a in (exp.get("auxiliary") or {}).items()]
        lacking = []
        for mid, name, pool in expected:
            absent = [f for f in folds if (d, mid, f) not in pool]
            if absent:
                lacking.append(name if len(absent) == len(folds) else f"{name} (fold {', '.join(absent)})")
        if lacking:
            out.append(f"{d}: every row" if len(lacking) == len(expected) else f"{d}: {', '.join(lacking)}")
    return out


def _without_unrun_items(exp: dict[str, Any], pairs: Any, aux: Any) -> dict[str, Any]:
    """``exp`` without the ``report.tables`` / ``report.figures`` items of a partly run experiment that name a
    method or auxiliary network with no metrics at all (they are not written, so the front page lists them as
    not yet run); a complete run keeps every item and a bad item still fails in :func:`extras.check_inputs`."""
    methods = set(pairs["method"].astype(str))
    auxes = set(aux["aux"].astype(str)) if aux is not None else set()
    rep = dict(exp["report"])
    for key in ("tables", "figures"):
        kept = []
        for item in rep.get(key) or []:
            absent = ([m for m in item.get("methods", []) if m not in methods]
                      + [a for a in item.get("auxiliary", []) if a not in auxes])
            if absent:
                log.warning("report.%s %r not written: no metrics yet for %s", key, item.get("name"), absent)
            else:
                kept.append(item)
        if key in rep:
            rep[key] = kept
    return {**exp, "report": rep}


def render_experiment(exp: dict[str, Any], metrics_paths: Sequence[Path], out_dir: Path,
                      reg_root: Path | None = None, prep_root: Path | None = None,
                      aux_metrics_paths: Sequence[Path] = (), models_root: Path | None = None) -> list[Path]:
    """Write every table and figure of ``exp`` from its metrics TSVs; return the written paths.

    Args:
        exp: validated experiment config (:func:`regbench.config.validate_experiment`).
        metrics_paths: the metrics TSVs of all (dataset, method, fold) jobs.
        out_dir: ``results/<experiment>``.
        reg_root, prep_root: roots of registration outputs and prepared data (default
            ``work/<experiment>/reg`` and ``data/prep/<experiment>``) for the qualitative panel. If they are
            missing (a reviewer regenerating tables from committed metrics), the existing panel is kept.
        aux_metrics_paths: aux metrics TSVs of the auxiliary networks (:func:`tables.load_aux_metrics`),
            needed only by ``report.tables`` items with ``auxiliary``; default none.
        models_root: root of the training runs (default ``work/<experiment>/models``), read for the
            ``report.training_curves`` figures; without logs the existing figures are kept.

    Raises:
        DataError: a metrics or aux metrics file is missing or empty (from :func:`tables.load_metrics` /
            :func:`tables.load_aux_metrics`).
        ConfigError: a ``report.tables`` / ``report.figures`` item is inconsistent with the metrics
            (:func:`extras.render_extras`); checked before anything is written.
    """
    name = exp["experiment"]
    rep = exp["report"]
    reg_root = reg_root or Path("work") / name / "reg"
    prep_root = prep_root or Path("data") / "prep" / name
    df = tables.load_metrics(metrics_paths)
    devices = sorted(df["device"].dropna().astype(str).unique()) if "device" in df else []
    prov = provenance.collect(exp, devices=devices)
    notes = _notes(exp)
    order = rep.get("method_order")
    pairs = tables.per_pair(df)
    aux = tables.load_aux_metrics(aux_metrics_paths) if aux_metrics_paths else None
    not_run = missing_runs(exp, df, aux if exp.get("auxiliary") else None)
    if not_run:  # a partly run experiment rendered from the metrics at hand: say what is absent
        notes.insert(2, "NOT YET RUN (absent from these tables; the config has them): " + "; ".join(not_run))
        prov["not_yet_run"] = not_run
        log.warning("%s: not yet run: %s", name, "; ".join(not_run))
        exp = _without_unrun_items(exp, pairs, aux)
    extras.check_inputs(exp, pairs, aux, df)  # fail on a bad ablation config before writing anything
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    main_pairs, main_df = pairs, df
    if order:  # report.method_order lists the main table's methods; others appear only in report.tables/figures
        main_pairs, main_df = pairs[pairs["method"].isin(order)], df[df["method"].isin(order)]
    summaries, per_label = [], []
    for dataset, sub in main_pairs.groupby("dataset", sort=False):
        t = tables.summary_table(sub, rep["metrics"], method_order=order, reference=rep.get("reference"),
                                 paper_values=(rep.get("paper_values") or {}).get(dataset),
                                 paired_test=rep.get("paired_test") or "wilcoxon")
        summaries.append((dataset, t))
        per_label.append((dataset, tables.per_label_table(main_df[main_df["dataset"] == dataset], "dsc",
                                                          method_order=order)))

    combine = tables.combine_datasets
    title = rep["title"]
    names = extras.main_names(exp)
    written += tables.write_table(combine(summaries), out_dir / names["table"], title, prov, notes).values()
    written += tables.write_table(combine(per_label), out_dir / names["table_dsc_per_label"],
                                  f"{title}: DSC per label", prov, notes).values()
    box, box_order = main_pairs, order
    if main_pairs["dataset"].nunique() > 1:  # one box per (dataset, method): never pool datasets in a figure
        box = main_pairs.assign(method=main_pairs["dataset"] + ":" + main_pairs["method"],
                                method_name=main_pairs["method_name"] + " (" + main_pairs["dataset"] + ")")
        box_order = [f"{d}:{m}" for d in evaluated_datasets(exp) for m in (order or list(exp["methods"]))]
    written += figures.boxplots(box, rep["metrics"], out_dir / names["fig_boxplots"], method_order=box_order,
                                title=title).values()

    dataset = evaluated_datasets(exp)[0]
    fold = exp["datasets"][dataset]["folds"][0]
    ordered = order or list(exp["methods"])
    reg_dirs = {exp["methods"][m]["name"]: reg_root / dataset / m / f"fold{fold}" for m in ordered
                if (reg_root / dataset / m / f"fold{fold}" / "pairs.tsv").exists()}
    cases = prep_root / dataset / "cases.tsv"
    if reg_dirs and cases.exists():
        written += figures.qualitative_from_dirs(
            cases, reg_dirs, rep.get("qualitative_pair"), exp["datasets"][dataset]["modality"],
            out_dir / names["fig_qualitative"], title=f"{title}: one test pair ({dataset}, fold {fold})",
            seg=exp["datasets"][dataset].get("seg", "seg"),
            orientation=rep.get("qualitative_orientation", "ras"),
        ).values()
    else:
        log.warning("registration outputs under %s are absent; keeping the existing qualitative figure", reg_root)
    written += extras.render_extras(exp, pairs, aux, out_dir, prov, notes, labels=df, reg_root=reg_root,
                                    prep_root=prep_root)
    written += budget.render_series(exp, pairs, out_dir, prov, notes)
    written += budget.render_curves(exp, out_dir, models_root or Path("work") / name / "models",
                                    extras.scale_line(notes, prov))
    (out_dir / "provenance.json").write_text(json.dumps(prov, indent=2, default=str))
    log.info("wrote %d report files to %s", len(written), out_dir)
    return written
