"""Extra tables and figures for ablation studies, configured in the experiment's ``report`` block.

He et al. 2022 (few-shot learning for deformable registration with attention and auxiliary networks)
report, besides the main comparison, ablations that this module renders from the same metrics:

* ``report.tables`` (one ``results/<experiment>/<name>.{md,csv,tex}`` per item, written by
  :func:`regbench.report.tables.write_table` with the run's provenance and notes, including the
  SCALED-DOWN line of a scaled-down run):

  - a **registration-method table** (``methods: [...]``, optional ``reference``): the main table
    (:func:`regbench.report.tables.summary_table`) restricted to these methods in this order, per dataset
    (stacked with a ``Dataset`` column when there are several), the paper's value beside ours where
    ``paper_values`` has one and a paired Wilcoxon p of each method vs ``reference`` on per-pair DSC.
    Paper Table 4 (with / without the attention module).
  - an **auxiliary-network table** (``auxiliary: [...]``): rows (dataset, auxiliary network), metrics as
    mean ± std over the test cases of the aux metrics TSVs (:func:`regbench.report.tables.load_aux_metrics`,
    :func:`regbench.report.tables.aux_summary_table`), ``n_cases`` and the paper's value beside ours.
    Paper Table 2 (segmenter trained with cross-entropy vs contour loss: DSC) and Table 3 (autoencoder:
    DSC, HD, ASSD in pixels).
  - a **per-label table** (``columns: labels`` with ``methods``; :func:`label_table`): one dataset
    (``dataset``, needed when the methods have rows in several), one block per metric (``layout: rows``:
    stacked as row groups with a ``Metric`` column, the default; ``layout: columns``: column groups), one
    column per label (``label_names``: subset and order, default all in label-id order), cells ``mean ± std``
    over test pairs of that label's value, the best of each column in bold (``bold_best: false`` to turn
    off), ``percent: [dsc]`` to show DSC x 100, and ``paper_values: {dataset: {method: {metric: {label_name:
    value}}}}`` beside ours (give them in the unit shown). Zhu et al. 2021 Tables I (affine rows) and II.
  - a **dataset-columns table** (``columns: datasets``; :func:`dataset_table`): rows = methods, one column
    per (metric, dataset) (``datasets``: subset and order), ``mean ± std`` over that dataset's pairs, the
    paper's value beside ours (``paper_values`` as in the main table), best in bold. Zhu et al. 2021
    Table III (run time per pair: ``metrics: [runtime_s]``).

* ``report.figures`` (one ``results/<experiment>/<name>.{png,pdf}`` per item):

  - ``kind: bar``: one ``metric``; x = dataset, one bar per method with mean ± std (``ddof=1``) error bar
    over test pairs and the mean printed above the bar. Paper Fig. 8 (SSIM of the attention-cleaned image
    with and without the SSIM loss: ``metric: ssim_clean``).
  - ``kind: box``: ``metrics`` (one subplot row each) x datasets (one subplot column each); x = methods
    (tick ``labels``, e.g. the number of fused scales), box plot of the per-pair values with the mean marked
    by an asterisk. Paper Fig. 9 (number of fused scales 1..4). With ``datasets: [d]`` one dataset per
    figure and ``percent: [dsc]``: Zhu et al. 2021 Figs. 4, 8, 14 (DSC, HD, ASSD of every method, mean
    over labels per pair). ``datasets`` and ``percent`` apply to ``bar`` too.
  - ``kind: per_label`` (:func:`per_label_figure`): one ``metric`` of every method on each label of one
    ``dataset`` (bars of mean ± std over pairs, or ``style: box``), one colour per method with a legend,
    rotated label names, ``labels_per_row`` labels per subplot row (default 30); ``mark_best: <method id>``
    puts a "*" above every label where that method is strictly better than all others and writes the count
    ("best of the 6 methods on 44 of 54 labels") as the second title line. Zhu et al. 2021 Figs. 5-7, 11-13.
  - ``kind: difference`` (:func:`difference_figure`): for test ``pairs`` (default ``report.qualitative_pair``
    or the first) of ``dataset`` / ``fold`` (default the first), the fixed and moving images and each
    method's warped image on a slice, with the difference maps ``|fixed − moving|`` / ``|fixed − warped|``
    below, read from ``work/<experiment>/reg`` and ``data/prep/<experiment>`` like the main qualitative
    panel; the committed figure is kept when those are absent. Zhu et al. 2021 Figs. 9-10.

  Every figure of a scaled-down run carries the SCALED-DOWN note as a footer, so it cannot pass for the
  paper's figure.

Config example (``report:`` block of an experiment YAML)::

    tables:
      - name: table2_segmenter
        title: "Segmenter: cross-entropy vs contour loss (He et al. 2022, Table 2)"
        auxiliary: [seg_ce, seg_contour]
        metrics: [dsc]
        paper_values: {jsrt: {seg_contour: {dsc: "0.961"}}}
      - name: table4_attention
        title: "With / without attention (He et al. 2022, Table 4)"
        methods: [he2022_noatt, he2022]
        reference: he2022
        metrics: [dsc, hd_px, assd_px]
    figures:
      - name: fig8_ssim
        title: "SSIM with / without the SSIM loss (He et al. 2022, Fig. 8)"
        kind: bar
        methods: [he2022_nossim, he2022]
        labels: [without SSIM loss, with SSIM loss]
        metric: ssim_clean
      - name: fig9_scales
        title: "Number of fused scales (He et al. 2022, Fig. 9)"
        kind: box
        methods: [he2022_s1, he2022_s2, he2022_s3, he2022]
        labels: ["1", "2", "3", "4"]
        xlabel: number of fused scales
        metrics: [dsc, hd_px]

Per-label items (Zhu et al. 2021)::

    tables:
      - name: table2_regions
        title: "Mindboggle-101, five regions (Zhu et al. 2021, Table II)"
        columns: labels
        dataset: mindboggle101
        methods: [before, syn, voxelmorph, zhu2021]
        metrics: [dsc, hd, assd]
        percent: [dsc]
        paper_values: {mindboggle101: {zhu2021: {dsc: {frontal: "63.7 ± 7.3", parietal: "56.8 ± 6.6"}}}}
      - name: table3_runtime
        title: "Inference time per pair (Zhu et al. 2021, Table III)"
        columns: datasets
        methods: [ants_affine, syn, voxelmorph, zhu2021]
        metrics: [runtime_s]
        paper_values: {mindboggle101: {zhu2021: {runtime_s: "1.78 ± 0.01"}}}
    figures:
      - name: fig5_lpba40_dsc
        title: "DSC on the 54 LPBA40 ROIs (Zhu et al. 2021, Fig. 5)"
        kind: per_label
        dataset: lpba40
        metric: dsc
        percent: [dsc]
        methods: [syn, voxelmorph, zhu2021]
        mark_best: zhu2021
      - name: fig9_differences
        title: "Registration results and difference maps (Zhu et al. 2021, Fig. 9)"
        kind: difference
        dataset: mindboggle101
        methods: [syn, voxelmorph, zhu2021]

:func:`extra_outputs` lists the files (for the Snakemake ``report`` rule's outputs); :func:`render_extras`
writes them (called by :func:`regbench.report.experiment.render_experiment`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..config import evaluated_datasets
from ..errors import ConfigError, DataError
from ..utils import get_logger
from . import budget, tables
from .common import FIGURE_SUFFIXES, TABLE_SUFFIXES, _footer, scale_line

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure

log = get_logger(__name__)

#: The main outputs :func:`regbench.report.experiment.render_experiment` writes (besides ``provenance.json``), by
#: their default stems, which ``report.names`` may change (:func:`main_names`), with the file suffixes the
#: Snakemake report rule lists.
MAIN_OUTPUTS = {"table": ("md", "csv", "tex"), "table_dsc_per_label": ("md",), "fig_boxplots": ("png", "pdf"),
                "fig_qualitative": ("png", "pdf")}
FIGURE_KINDS = ("bar", "box", "per_label", "difference", "qualitative")
#: ``columns`` of a registration-method table: metrics (the default), labels, datasets.
TABLE_COLUMNS = ("metrics", "labels", "datasets")

_TABLE_COMMON = {"name", "title", "metrics", "paper_values"}
#: Keys a table may have, by form (``auxiliary`` or its ``columns``).
TABLE_KEYS = {
    "auxiliary": _TABLE_COMMON | {"auxiliary"},
    "metrics": _TABLE_COMMON | {"methods", "reference", "paired_test", "columns"},
    "labels": _TABLE_COMMON | {"methods", "columns", "dataset", "label_names", "layout", "percent", "bold_best"},
    "datasets": _TABLE_COMMON | {"methods", "columns", "datasets", "percent", "bold_best"},
}
_FIGURE_COMMON = {"name", "title", "kind", "methods", "labels"}
#: Keys a figure may have, by kind.
FIGURE_KEYS = {
    "bar": _FIGURE_COMMON | {"metric", "datasets", "percent"},
    "box": _FIGURE_COMMON | {"metrics", "xlabel", "datasets", "percent"},
    "per_label": _FIGURE_COMMON | {"metric", "dataset", "label_names", "mark_best", "percent", "style",
                                   "labels_per_row"},
    "difference": _FIGURE_COMMON | {"dataset", "fold", "pairs", "slice_axis", "slice_index"},
    "qualitative": _FIGURE_COMMON | {"dataset", "fold", "pair", "slice_axis"},
}


def _items(exp: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    return list((exp.get("report") or {}).get(key) or [])


def _where(key: str, i: int, item: Mapping[str, Any]) -> str:
    return f"report.{key}[{i}] ({item.get('name', '?')!r})"


def table_form(item: Mapping[str, Any]) -> str:
    """``"auxiliary"`` for an auxiliary-network table, else its ``columns`` (default ``"metrics"``)."""
    return "auxiliary" if "auxiliary" in item else str(item.get("columns") or "metrics")


def check_extras(exp: Mapping[str, Any]) -> None:
    """Check ``report.tables`` / ``report.figures`` beyond what the schema can express.

    Checks: names (of tables, figures, ``report.budget_series`` and ``report.training_curves`` items,
    :func:`regbench.report.budget.check_series`) are unique and not a main output's (:func:`main_names`); a table has exactly one of
    ``methods`` / ``auxiliary``, ``reference`` only with ``methods`` and among them, a known ``columns``
    and only the keys of its form (:data:`TABLE_KEYS`); a figure has a known ``kind`` with ``metric`` (bar,
    per_label) or ``metrics`` (box), only the keys of its kind (:data:`FIGURE_KEYS`), ``labels`` as long as
    ``methods`` and ``mark_best`` among them; every method id is declared in ``exp["methods"]``, every
    auxiliary id in ``exp["auxiliary"]``, every ``dataset`` / ``datasets`` entry in ``exp["datasets"]`` and a
    difference figure's ``fold`` among that dataset's folds (when the experiment declares them).

    Raises:
        ConfigError: naming the table/figure and what is wrong.
    """
    declared = set((exp.get("methods") or {}).keys())
    ds_declared = exp.get("datasets") or {}
    seen: dict[str, str] = {}
    reserved = set(main_names(exp).values()) | {"provenance"}

    def name_ok(where: str, item: Mapping[str, Any]) -> None:
        name = str(item.get("name") or "")
        if not name:
            raise ConfigError(f"{where}: no name")
        if name in reserved:
            raise ConfigError(f"{where}: name {name!r} is reserved for the main outputs {sorted(reserved)}")
        if name in seen:
            raise ConfigError(f"{where}: name {name!r} is already used by {seen[name]}")
        seen[name] = where

    def methods_ok(where: str, methods: Sequence[str]) -> None:
        if not methods:
            raise ConfigError(f"{where}: empty methods list")
        if declared:
            unknown = [m for m in methods if m not in declared]
            if unknown:
                raise ConfigError(f"{where}: unknown method id(s) {unknown}; declared methods: {sorted(declared)}")

    def keys_ok(where: str, item: Mapping[str, Any], allowed: set[str], what: str) -> None:
        bad = sorted(k for k in item if k not in allowed)
        if bad:
            raise ConfigError(f"{where}: key(s) {bad} do not apply to {what}; its keys: {sorted(allowed)}")

    def datasets_ok(where: str, names: Sequence[str], key: str) -> None:
        if ds_declared:
            unknown = [d for d in names if d not in ds_declared]
            if unknown:
                raise ConfigError(f"{where}: {key} {unknown} not among the experiment's datasets {list(ds_declared)}")

    def percent_ok(where: str, item: Mapping[str, Any]) -> None:
        pct = item.get("percent")
        if pct is not None and (isinstance(pct, str) or not all(isinstance(x, str) for x in pct)):
            raise ConfigError(f"{where}: percent is a list of metric names (e.g. [dsc]); got {pct!r}")

    def scoped_ok(where: str, item: Mapping[str, Any]) -> None:
        if "dataset" in item:
            datasets_ok(where, [str(item["dataset"])], "dataset")
        if "datasets" in item:
            if not item["datasets"]:
                raise ConfigError(f"{where}: empty datasets list")
            datasets_ok(where, [str(d) for d in item["datasets"]], "datasets")
        percent_ok(where, item)

    for i, t in enumerate(_items(exp, "tables")):
        where = _where("tables", i, t)
        name_ok(where, t)
        if not t.get("metrics"):
            raise ConfigError(f"{where}: no metrics")
        has_m, has_a = "methods" in t, "auxiliary" in t
        if has_m == has_a:
            raise ConfigError(f"{where}: give exactly one of 'methods' (registration methods) or 'auxiliary' "
                              f"(auxiliary networks); got {'both' if has_m else 'neither'}")
        form = table_form(t)
        if form not in TABLE_KEYS:
            raise ConfigError(f"{where}: columns {t.get('columns')!r}; expected one of {list(TABLE_COLUMNS)}")
        what = "an auxiliary-network table" if form == "auxiliary" else f"a `columns: {form}` table"
        keys_ok(where, t, TABLE_KEYS[form], what)
        if has_m:
            methods_ok(where, t["methods"])
            ref = t.get("reference")
            if ref is not None and ref not in t["methods"]:
                raise ConfigError(f"{where}: reference {ref!r} is not one of its methods {list(t['methods'])}")
            scoped_ok(where, t)
            if form == "labels" and t.get("layout", "rows") not in ("rows", "columns"):
                raise ConfigError(f"{where}: layout {t.get('layout')!r}; expected 'rows' or 'columns'")
        else:
            if not t["auxiliary"]:
                raise ConfigError(f"{where}: empty auxiliary list")
            aux_declared = exp.get("auxiliary")
            if aux_declared:
                unknown = [a for a in t["auxiliary"] if a not in aux_declared]
                if unknown:
                    raise ConfigError(f"{where}: unknown auxiliary network id(s) {unknown}; "
                                      f"declared auxiliary networks: {sorted(aux_declared)}")
            if t.get("reference") is not None:
                raise ConfigError(f"{where}: 'reference' applies to registration-method tables only")
    for i, f in enumerate(_items(exp, "figures")):
        where = _where("figures", i, f)
        name_ok(where, f)
        kind = f.get("kind")
        if kind not in FIGURE_KINDS:
            raise ConfigError(f"{where}: kind {kind!r}; expected one of {list(FIGURE_KINDS)}")
        keys_ok(where, f, FIGURE_KEYS[kind], f"a {kind} figure")
        methods_ok(where, f.get("methods") or [])
        labels = f.get("labels")
        if labels is not None and len(labels) != len(f["methods"]):
            raise ConfigError(f"{where}: {len(labels)} labels for {len(f['methods'])} methods")
        if kind in ("bar", "per_label") and not f.get("metric"):
            raise ConfigError(f"{where}: a {kind} figure needs 'metric' (one column, e.g. "
                              f"{'ssim_clean' if kind == 'bar' else 'dsc'})")
        if kind == "box" and not f.get("metrics"):
            raise ConfigError(f"{where}: a box figure needs 'metrics' (a list of columns)")
        scoped_ok(where, f)
        mark = f.get("mark_best")
        if mark is not None and mark not in f["methods"]:
            raise ConfigError(f"{where}: mark_best {mark!r} is not one of its methods {list(f['methods'])}")
        if f.get("style", "bar") not in ("bar", "box"):
            raise ConfigError(f"{where}: style {f.get('style')!r}; expected 'bar' or 'box'")
        if kind in ("difference", "qualitative") and ds_declared:
            d = str(f.get("dataset") or next(iter(ds_declared)))
            folds = ds_declared[d].get("folds") if isinstance(ds_declared[d], Mapping) else None
            if "fold" in f and folds is not None and f["fold"] not in folds:
                raise ConfigError(f"{where}: fold {f['fold']!r} is not a fold of dataset {d!r} ({list(folds)})")
    budget.check_series(exp, {**seen, **dict.fromkeys(reserved, "the main outputs")})


def main_names(exp: Mapping[str, Any]) -> dict[str, str]:
    """``{default stem: stem written}`` of the main outputs (:data:`MAIN_OUTPUTS`): the defaults, renamed by
    ``report.names`` (e.g. ``{table: table1, fig_qualitative: fig5_qualitative}``, to name them as the paper
    does).

    Raises:
        ConfigError: an unknown key, or two main outputs (or ``provenance``) given one name.
    """
    given = dict((exp.get("report") or {}).get("names") or {})
    unknown = sorted(set(given) - set(MAIN_OUTPUTS))
    if unknown:
        raise ConfigError(f"report.names: unknown output(s) {unknown}; renamable: {sorted(MAIN_OUTPUTS)}")
    names = {k: str(given.get(k, k)) for k in MAIN_OUTPUTS}
    stems = list(names.values()) + ["provenance"]
    dup = sorted({n for n in stems if stems.count(n) > 1})
    if dup:
        raise ConfigError(f"report.names: {dup} would be written twice (main outputs {names}, provenance)")
    return names


def main_outputs(exp: Mapping[str, Any]) -> list[str]:
    """File names, relative to ``results/<experiment>/``, of the main outputs of ``exp`` (summary table,
    per-label DSC table, box plots, qualitative panel; :func:`main_names`), in :data:`MAIN_OUTPUTS` order.

    Raises:
        ConfigError: see :func:`main_names`.
    """
    names = main_names(exp)
    return [f"{names[k]}.{ext}" for k, exts in MAIN_OUTPUTS.items() for ext in exts]


def extra_outputs(exp: Mapping[str, Any]) -> list[str]:
    """File names, relative to ``results/<experiment>/``, of every extra table and figure of ``exp``.

    Tables give ``<name>.md``, ``<name>.csv``, ``<name>.tex``; figures ``<name>.png``, ``<name>.pdf``; in
    config order, tables first, then figures, then the ``report.budget_series`` and
    ``report.training_curves`` items (:func:`regbench.report.budget.outputs`). ``[]`` when the report block
    has none of these.

    Raises:
        ConfigError: see :func:`check_extras`.
    """
    check_extras(exp)
    out = [f"{t['name']}.{ext}" for t in _items(exp, "tables") for ext in TABLE_SUFFIXES]
    out += [f"{f['name']}.{ext}" for f in _items(exp, "figures") for ext in FIGURE_SUFFIXES]
    return out + budget.outputs(exp)


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def _require_methods(where: str, ids: Sequence[str], pairs: pd.DataFrame) -> None:
    present = set(pairs["method"].astype(str)) if pairs is not None and "method" in pairs.columns else set()
    missing = [m for m in ids if m not in present]
    if missing:
        raise ConfigError(f"{where}: method id(s) {missing} have no rows in the metrics; "
                          f"methods in the metrics: {sorted(present)}")


def _require_aux(where: str, ids: Sequence[str], aux: pd.DataFrame | None) -> None:
    if aux is None or aux.empty:
        raise ConfigError(f"{where}: lists auxiliary networks {list(ids)} but no aux metrics were given "
                          "(pass aux metrics TSVs: `regbench report --aux-metrics P [P ...]`)")
    present = set(aux["aux"].astype(str))
    missing = [a for a in ids if a not in present]
    if missing:
        raise ConfigError(f"{where}: auxiliary network(s) {missing} have no rows in the aux metrics; "
                          f"present: {sorted(present)}")


def _label_df(where: str, labels: pd.DataFrame | None, pairs: pd.DataFrame | None) -> pd.DataFrame:
    """The label-level metrics: ``labels`` or the rows ``pairs`` was made from (:func:`tables.label_rows`)."""
    df = labels if labels is not None else tables.label_rows(pairs)
    if df is None or df.empty:
        raise DataError(f"{where}: needs the label-level metrics (one row per pair and label); pass them as "
                        "`labels=` or a per-pair table made by tables.per_pair")
    if "label" not in df.columns and "label_name" not in df.columns:
        raise DataError(f"{where}: the metrics have no 'label' or 'label_name' column; has {list(df.columns)}")
    return df


def _one_dataset(where: str, item: Mapping[str, Any], df: pd.DataFrame) -> str:
    """The dataset of a per-label table / figure: ``item["dataset"]`` (where every listed method must have
    rows), else the only dataset with rows of the listed methods."""
    ids = [str(m) for m in item["methods"]]
    d = item.get("dataset")
    if d is None:
        present = _datasets(df[df["method"].astype(str).isin(ids)])
        if len(present) != 1:
            raise ConfigError(f"{where}: its methods have rows in {len(present)} datasets {present}; "
                              "choose one with `dataset`")
        return present[0]
    d = str(d)
    here = set(df.loc[df["dataset"].astype(str) == d, "method"].astype(str))
    missing = [m for m in ids if m not in here]
    if missing:
        raise ConfigError(f"{where}: method id(s) {missing} have no rows in dataset {d!r}; "
                          f"methods there: {sorted(here)}")
    return d


def _check_label_names(where: str, item: Mapping[str, Any], dsub: pd.DataFrame, dataset: str) -> None:
    names = item.get("label_names")
    if not names:
        return
    _, order, ids = tables._label_column(dsub)
    known = set(order) | {str(v) for v in ids.values() if v is not None}
    missing = [x for x in names if str(x) not in known]
    if missing:
        raise ConfigError(f"{where}: label(s) {missing} not in the metrics of dataset {dataset!r}; labels: {order}")


def _check_datasets(where: str, item: Mapping[str, Any], pairs: pd.DataFrame) -> None:
    if not item.get("datasets"):
        return
    ids = [str(m) for m in item["methods"]]
    present = _datasets(pairs[pairs["method"].astype(str).isin(ids)])
    missing = [str(d) for d in item["datasets"] if str(d) not in present]
    if missing:
        raise ConfigError(f"{where}: dataset(s) {missing} have no rows of its methods; datasets with rows: {present}")


def _is_per_label(key: str, item: Mapping[str, Any]) -> bool:
    return (key == "tables" and table_form(item) == "labels") or (key == "figures" and item.get("kind") == "per_label")


def check_inputs(exp: Mapping[str, Any], pairs: pd.DataFrame, aux: pd.DataFrame | None,
                 labels: pd.DataFrame | None = None) -> None:
    """:func:`check_extras`, then check the items against the metrics (so a bad config fails before any
    output): every method id of ``report.tables`` / ``report.figures`` has rows in ``pairs``, every
    auxiliary id has rows in ``aux``, every ``datasets`` entry has rows of the item's methods; a per-label
    table or figure (``columns: labels``, ``kind: per_label``) has one dataset where all its methods have
    rows, its ``label_names`` among that dataset's labels and its metrics there.

    ``labels``: the label-level metrics (default: the rows ``pairs`` was made from, :func:`tables.label_rows`).

    Raises:
        ConfigError: naming the table or figure and the missing method ids, aux ids, aux metrics, datasets,
            labels or metrics.
        DataError: a per-label item, but no label-level metrics.
    """
    check_extras(exp)
    for key in ("tables", "figures"):
        for i, item in enumerate(_items(exp, key)):
            where = _where(key, i, item)
            if "methods" in item:
                _require_methods(where, [str(m) for m in item["methods"]], pairs)
                _check_datasets(where, item, pairs)
            if "auxiliary" in item:
                _require_aux(where, [str(a) for a in item["auxiliary"]], aux)
            if _is_per_label(key, item):
                df = _label_df(where, labels, pairs)
                d = _one_dataset(where, item, df)
                dsub = df[df["dataset"].astype(str) == d]
                _check_label_names(where, item, dsub, d)
                for metric in item.get("metrics") or [item.get("metric")]:
                    _resolve(f"{where}: dataset {d!r}", dsub, str(metric))


def _datasets(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["dataset"].astype(str)))


def _resolve(where: str, df: pd.DataFrame, metric: str) -> str:
    """Metric column of ``df``, preferring a column that has values (``_mm`` vs ``_px`` per dataset)."""
    try:
        return tables.resolve_metric(df.dropna(axis=1, how="all"), metric)
    except KeyError:
        pass
    try:
        return tables.resolve_metric(df, metric)
    except KeyError as exc:
        raise ConfigError(f"{where}: {exc.args[0]}") from exc


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------


def method_table(spec: Mapping[str, Any], pairs: pd.DataFrame, where: str = "report.tables",
                 paired_test: str = "wilcoxon") -> pd.DataFrame:
    """Registration-method table (paper Table 4): the main table restricted to ``spec["methods"]``.

    Per dataset (first-appearance order) :func:`tables.summary_table` of the listed methods present there,
    in the listed order, with ``paper_values[dataset]`` and the paired test (``spec["paired_test"]``, else
    ``paired_test``: ``wilcoxon`` or ``ttest``) vs ``spec["reference"]`` (skipped, with a warning, in a
    dataset without the reference); stacked by
    :func:`tables.combine_datasets`.

    Raises:
        ConfigError: a method id has no rows in ``pairs``, or a metric is missing.
    """
    ids = [str(m) for m in spec["methods"]]
    _require_methods(where, ids, pairs)
    ref = spec.get("reference")
    paper = spec.get("paper_values") or {}
    sub = pairs[pairs["method"].astype(str).isin(ids)]
    items = []
    for dataset in _datasets(sub):
        d = sub[sub["dataset"].astype(str) == dataset]
        here = [m for m in ids if m in set(d["method"].astype(str))]
        r = ref if ref in here else None
        if ref is not None and r is None:
            log.warning("%s: reference %r has no rows in dataset %r; no p-values there", where, ref, dataset)
        try:
            t = tables.summary_table(d, spec["metrics"], method_order=here, reference=r,
                                     paper_values=paper.get(dataset),
                                     paired_test=spec.get("paired_test") or paired_test)
        except KeyError as exc:
            raise ConfigError(f"{where}: dataset {dataset!r}: {exc.args[0]}") from exc
        items.append((dataset, t))
    return tables.combine_datasets(items)


def auxiliary_table(spec: Mapping[str, Any], aux: pd.DataFrame | None, where: str = "report.tables") -> pd.DataFrame:
    """Auxiliary-network table (paper Tables 2 and 3) of ``spec["auxiliary"]`` via :func:`tables.aux_summary_table`.

    Raises:
        ConfigError: no aux metrics were given, an aux id has no rows, or a metric is missing.
    """
    ids = [str(a) for a in spec["auxiliary"]]
    _require_aux(where, ids, aux)
    try:
        return tables.aux_summary_table(aux[aux["aux"].astype(str).isin(ids)], spec["metrics"], aux_order=ids,
                                        paper_values=spec.get("paper_values"))
    except KeyError as exc:
        raise ConfigError(f"{where}: {exc.args[0]}") from exc


def label_table(spec: Mapping[str, Any], pairs: pd.DataFrame | None, where: str = "report.tables",
                labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-label table (``columns: labels``; Zhu et al. 2021, Tables I-II) of ``spec["methods"]`` on one
    dataset, via :func:`tables.label_metric_table` (``metrics`` blocks, ``label_names``, ``layout``,
    ``percent``, ``bold_best`` and ``paper_values[dataset]`` = ``{method: {metric: {label_name: value}}}``).

    Raises:
        ConfigError: see :func:`check_inputs`; the paper values are not per label.
        DataError: no label-level metrics.
    """
    ids = [str(m) for m in spec["methods"]]
    df = _label_df(where, labels, pairs)
    dataset = _one_dataset(where, spec, df)
    sub = df[(df["dataset"].astype(str) == dataset) & df["method"].astype(str).isin(ids)]
    _check_label_names(where, spec, sub, dataset)
    try:
        return tables.label_metric_table(
            sub, spec["metrics"], method_order=ids, label_names=spec.get("label_names"),
            paper_values=(spec.get("paper_values") or {}).get(dataset), percent=spec.get("percent"),
            layout=spec.get("layout", "rows"), bold_best=spec.get("bold_best", True))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{where}: dataset {dataset!r}: {exc.args[0]}") from exc


def dataset_table(spec: Mapping[str, Any], pairs: pd.DataFrame, where: str = "report.tables") -> pd.DataFrame:
    """Methods x datasets table (``columns: datasets``; Zhu et al. 2021, Table III: run time per pair) via
    :func:`tables.dataset_columns_table` (``datasets``, ``percent``, ``bold_best``, ``paper_values`` =
    ``{dataset: {method: {metric: value}}}``).

    Raises:
        ConfigError: a method id or listed dataset has no rows, or a metric is missing.
    """
    ids = [str(m) for m in spec["methods"]]
    _require_methods(where, ids, pairs)
    _check_datasets(where, spec, pairs)
    sub = pairs[pairs["method"].astype(str).isin(ids)]
    try:
        return tables.dataset_columns_table(
            sub, spec["metrics"], method_order=ids, datasets=spec.get("datasets"),
            paper_values=spec.get("paper_values"), percent=spec.get("percent"), bold_best=spec.get("bold_best", True))
    except (KeyError, DataError) as exc:
        raise ConfigError(f"{where}: {exc.args[0]}") from exc


def _table_notes(spec: Mapping[str, Any], table: pd.DataFrame, notes: Sequence[str]) -> list[str]:
    """Notes under a per-label / dataset-columns table: the experiment's (per-label: :data:`tables.LABEL_STATS_NOTE`
    instead of the per-pair one), the metrics in percent and the bold marks."""
    form = table_form(spec)
    out = list(notes)
    if form == "labels":
        out = [n for n in out if n != tables.PAIR_STATS_NOTE] + [tables.LABEL_STATS_NOTE]
    num = tables.numeric_table(table)
    if "scale" in num.columns and (num["scale"] != 1).any():
        pct = list(dict.fromkeys(num.loc[num["scale"] != 1, "metric"]))
        names = ", ".join(tables.metric_info(c).label for c in pct)
        out.append(f"{names} in % (our values x 100; paper values as the paper gives them).")
    if spec.get("bold_best", True):
        block = " within each metric block" if form == "labels" and spec.get("layout", "rows") == "rows" else ""
        out.append(tables.BOLD_NOTE.format(block=block))
    return out


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------


def _labels(spec: Mapping[str, Any], pairs: pd.DataFrame) -> list[str]:
    ids = [str(m) for m in spec["methods"]]
    if spec.get("labels"):
        return [str(x) for x in spec["labels"]]
    names = tables._method_names(pairs)
    return tables._display_index(ids, names)


def _values(pairs: pd.DataFrame, dataset: str, method: str, col: str) -> np.ndarray:
    sel = (pairs["dataset"].astype(str) == dataset) & (pairs["method"].astype(str) == method)
    return pd.to_numeric(pairs.loc[sel, col], errors="coerce").dropna().to_numpy(dtype=float)


def _shown_datasets(spec: Mapping[str, Any], sub: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows of ``spec["datasets"]`` (default all) and those datasets, in that order (default: first appearance)."""
    if not spec.get("datasets"):
        return sub, _datasets(sub)
    datasets = [str(d) for d in spec["datasets"]]
    return sub[sub["dataset"].astype(str).isin(datasets)], datasets


def _scaled_info(spec: Mapping[str, Any], metric: str, col: str) -> tuple[tables.MetricInfo, float]:
    """Display info and factor of a metric: x 100 with a ``(%)`` label if ``spec["percent"]`` lists it."""
    if tables.in_percent(spec.get("percent"), metric, col):
        return tables.percent_info(tables.metric_info(col)), 100.0
    return tables.metric_info(col), 1.0


def bar_figure(spec: Mapping[str, Any], pairs: pd.DataFrame, footer: str | None = None,
               where: str = "report.figures") -> Figure:
    """Grouped bar chart (paper Fig. 8): x = dataset, one bar per method, mean ± std over pairs.

    Bars are in ``spec["methods"]`` order, named by ``spec["labels"]`` (legend); error bars are the sample
    std (``ddof=1``, none for a single pair); the mean is printed above each bar; a method without values
    in a dataset (e.g. ``ssim_clean`` of a method without attention) gets an ``n/a`` mark instead of a bar.

    Raises:
        ConfigError: a method id has no rows, or the metric column is missing.
    """
    import seaborn as sns

    from .figures import _new_figure

    ids = [str(m) for m in spec["methods"]]
    _require_methods(where, ids, pairs)
    labels = _labels(spec, pairs)
    sub, datasets = _shown_datasets(spec, pairs[pairs["method"].astype(str).isin(ids)])
    col = _resolve(where, sub, spec["metric"])
    info, scale = _scaled_info(spec, spec["metric"], col)
    colors = sns.color_palette("Set2", len(ids))
    width = 0.8 / len(ids)
    height = 4.0
    fig = _new_figure(max(4.5, 1.8 + len(datasets) * (0.55 * len(ids) + 0.5)), height)
    ax = fig.subplots()
    tops = []
    for j, (m, lab) in enumerate(zip(ids, labels)):
        first = True
        for i, d in enumerate(datasets):
            x = i - 0.4 + width * (j + 0.5)
            v = _values(sub, d, m, col) * scale
            if len(v) == 0:
                ax.text(x, 0.0, "n/a", ha="center", va="bottom", fontsize=7, color="0.4", rotation=90)
                continue
            mean = float(v.mean())
            std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
            err = None if math.isnan(std) else std
            ax.bar(x, mean, width * 0.9, yerr=err, capsize=3, color=colors[j], edgecolor="0.25", linewidth=0.6,
                   error_kw={"elinewidth": 0.8, "ecolor": "0.15"}, label=lab if first else None)
            first = False
            top = mean + (err or 0.0)
            tops.append(top)
            ax.annotate(info.fmt(mean), (x, top), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(range(len(datasets)))
    ax.set_xticklabels(datasets)
    ax.set_xlabel("dataset")
    ax.set_ylabel(info.header)
    if tops and min(tops) >= 0:
        ax.set_ylim(0.0, max(tops) * 1.15 or 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    ax.set_title(spec.get("title", ""), fontsize=10)
    bottom = _footer(fig, footer, height)
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    return fig


def box_figure(spec: Mapping[str, Any], pairs: pd.DataFrame, footer: str | None = None,
               where: str = "report.figures") -> Figure:
    """Box-plot grid (paper Fig. 9): one row per metric, one column per dataset, x = methods.

    Each box shows the per-pair values of one method (whiskers 1.5 IQR, outliers as dots), the mean is
    marked by a black asterisk; x tick labels are ``spec["labels"]`` (default the method names), the x axis
    is titled ``spec["xlabel"]`` (default ``method``), each y axis the metric's name with unit and direction.

    Raises:
        ConfigError: a method id has no rows, or a metric column is missing.
    """
    import logging
    import warnings

    import seaborn as sns
    from matplotlib import MatplotlibDeprecationWarning
    from matplotlib.lines import Line2D

    from .figures import _new_figure

    ids = [str(m) for m in spec["methods"]]
    _require_methods(where, ids, pairs)
    labels = _labels(spec, pairs)
    lab_of = dict(zip(ids, labels))
    sub, datasets = _shown_datasets(spec, pairs[pairs["method"].astype(str).isin(ids)].copy())
    sub["_x"] = sub["method"].astype(str).map(lab_of)
    metrics = list(spec["metrics"])
    nr, nc = len(metrics), len(datasets)
    height = 3.2 * nr + 0.6
    fig = _new_figure(max(3.6, 0.6 * len(ids) + 1.8) * nc, height)
    axes = fig.subplots(nr, nc, squeeze=False)
    # numeric tick labels ("1".."4" fused scales) are categories here; silence matplotlib's INFO note on it
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    mean_props = {"marker": "*", "markerfacecolor": "black", "markeredgecolor": "black", "markersize": 9}
    for r, metric in enumerate(metrics):
        for c, d in enumerate(datasets):
            ax = axes[r, c]
            dsub = sub[sub["dataset"].astype(str) == d]
            col = _resolve(f"{where}: dataset {d!r}", dsub, metric)
            info, scale = _scaled_info(spec, metric, col)
            vals = dsub[["_x", col]].copy()
            vals[col] = pd.to_numeric(vals[col], errors="coerce") * scale
            vals = vals.dropna()
            if vals.empty:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.4")
                ax.set_xticks([])
            else:
                with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
                    warnings.simplefilter("ignore", MatplotlibDeprecationWarning)
                    sns.boxplot(data=vals, x="_x", y=col, order=labels, hue="_x", hue_order=labels, legend=False,
                                ax=ax, palette="Set2", width=0.6, linewidth=1.0, showmeans=True,
                                meanprops=mean_props, flierprops={"marker": "o", "markersize": 2.5})
            ax.set_xlabel((spec.get("xlabel") or "method") if r == nr - 1 else "")
            ax.set_ylabel(info.header)
            if r == 0:
                ax.set_title(d, fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    axes[0, -1].legend(handles=[Line2D([], [], marker="*", color="black", linestyle="none", markersize=8,
                                       label="mean")], fontsize=8, loc="best")
    if spec.get("title"):
        fig.suptitle(spec["title"])
    bottom = _footer(fig, footer, height)
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    return fig


def label_means(spec: Mapping[str, Any], pairs: pd.DataFrame | None, where: str = "report.figures",
                labels: pd.DataFrame | None = None) -> dict[str, Any]:
    """Per-label statistics of a ``kind: per_label`` figure, over the test pairs of its dataset.

    Returns:
        ``{"dataset", "column", "info" (display info, ``(%)`` when in percent), "scale", "methods" (ids),
        "labels" (label names, in label-id order or ``label_names`` order), "mean", "std", "n" (DataFrames,
        index labels, columns methods; ``std`` sample std, NaN below 2 values), "values" ({(method, label):
        array}), "best" (bool Series over labels: ``mark_best`` has a value there and a strictly better mean
        than every other method with a value; all False without ``mark_best``), "n_best", "n_labels"}``.

    Raises:
        ConfigError: see :func:`check_inputs`; ``mark_best`` with a metric without a direction.
        DataError: no label-level metrics.
    """
    ids = [str(m) for m in spec["methods"]]
    df = _label_df(where, labels, pairs)
    dataset = _one_dataset(where, spec, df)
    sub = df[(df["dataset"].astype(str) == dataset) & df["method"].astype(str).isin(ids)].copy()
    _check_label_names(where, spec, sub, dataset)
    col = _resolve(f"{where}: dataset {dataset!r}", sub, spec["metric"])
    info, scale = _scaled_info(spec, spec["metric"], col)
    sub["_lab"], order, label_ids = tables._label_column(sub)
    if spec.get("label_names"):
        by_id = {str(v): k for k, v in label_ids.items()}
        order = [str(x) if str(x) in order else by_id[str(x)] for x in spec["label_names"]]
    sub["_v"] = pd.to_numeric(sub[col], errors="coerce") * scale
    sub["method"] = sub["method"].astype(str)
    g = sub.groupby(["_lab", "method"])["_v"]
    mean = g.mean().unstack("method").reindex(index=order, columns=ids)
    std = g.std(ddof=1).unstack("method").reindex(index=order, columns=ids)
    n = g.count().unstack("method").reindex(index=order, columns=ids).fillna(0).astype(int)
    values = {(m, lab): v["_v"].dropna().to_numpy(float) for (lab, m), v in sub.groupby(["_lab", "method"])}
    mark = spec.get("mark_best")
    best = pd.Series(False, index=pd.Index(order, name="label"))
    if mark is not None:
        if info.higher_is_better is None:
            raise ConfigError(f"{where}: mark_best needs a metric with a direction (higher or lower is better); "
                              f"{col!r} has none")
        own = mean[str(mark)]
        others = mean.drop(columns=str(mark))
        if info.higher_is_better:
            beats = others.lt(own, axis=0) | others.isna()
        else:
            beats = others.gt(own, axis=0) | others.isna()
        best = (own.notna() & beats.all(axis=1)).rename_axis("label")
    return {"dataset": dataset, "column": col, "info": info, "scale": scale, "methods": ids, "labels": order,
            "mean": mean, "std": std, "n": n, "values": values, "best": best, "n_best": int(best.sum()),
            "n_labels": len(order)}


def best_count_line(spec: Mapping[str, Any], stats: Mapping[str, Any], name: str) -> str:
    """``'"*": <name> best of the <k> methods on <n_best> of <n_labels> labels (<metric>)'``."""
    return (f"\u201c*\u201d: {name} best of the {len(stats['methods'])} methods on {stats['n_best']} of "
            f"{stats['n_labels']} labels ({stats['info'].label}, mean over test pairs)")


def per_label_figure(spec: Mapping[str, Any], pairs: pd.DataFrame | None, footer: str | None = None,
                     where: str = "report.figures", labels: pd.DataFrame | None = None) -> Figure:
    """Per-label comparison (``kind: per_label``; Zhu et al. 2021, Figs. 5-7 and 11-13): one ``metric`` of
    each method on every label of one dataset, side by side.

    x = labels (``label_name``, rotated), split into rows of at most ``labels_per_row`` labels (default 30)
    so that 54 or 66 labels stay readable; per label one bar per method (mean over test pairs, error bar =
    sample std) or, with ``style: box``, one box per method (per-pair values); one colour per method with a
    legend (``labels`` or the method names). With ``mark_best: <method id>`` a "*" is drawn above every label
    (over that method's bar or box) where its mean is strictly better than every other method's
    (:func:`label_means`), and the count ("best of the 6 methods on 44 of 54 labels") is the second title
    line. ``percent: [dsc]`` shows DSC in %.

    Raises:
        ConfigError, DataError: see :func:`label_means`.
    """
    from matplotlib.patches import Patch

    from .figures import _new_figure

    stats = label_means(spec, pairs, where, labels)
    ids, order, info = stats["methods"], stats["labels"], stats["info"]
    legend = _labels(spec, pairs if pairs is not None else _label_df(where, labels, pairs))
    colors = _method_colors(len(ids))
    per_row = int(spec.get("labels_per_row") or 30)
    nrows = max(1, math.ceil(len(order) / per_row))
    chunk = math.ceil(len(order) / nrows)
    rows = [order[r * chunk:(r + 1) * chunk] for r in range(nrows)]
    style = spec.get("style", "bar")
    group = 0.8
    w = group / len(ids)
    row_h = 3.6
    width = max(8.0, chunk * (0.12 * len(ids) + 0.3) + 2.8)
    height = nrows * row_h + 1.0
    fig = _new_figure(width, height)
    axes = np.atleast_1d(fig.subplots(nrows, 1, squeeze=False)[:, 0])
    for ax, labs in zip(axes, rows):
        x = np.arange(len(labs), dtype=float)
        tops = np.full(len(labs), -np.inf)
        lows = np.full(len(labs), np.inf)
        for j, m in enumerate(ids):
            pos = x - group / 2 + w * (j + 0.5)
            if style == "box":
                data = [stats["values"].get((m, lab), np.array([])) for lab in labs]
                keep = [i for i, v in enumerate(data) if len(v)]
                if keep:
                    bp = ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=w * 0.85, patch_artist=True,
                                    manage_ticks=False, showfliers=True,
                                    flierprops={"marker": "o", "markersize": 1.5, "alpha": 0.5},
                                    medianprops={"color": "0.1", "linewidth": 0.8},
                                    boxprops={"linewidth": 0.5}, whiskerprops={"linewidth": 0.5},
                                    capprops={"linewidth": 0.5})
                    for box in bp["boxes"]:
                        box.set_facecolor(colors[j])
                    for i in keep:
                        tops[i] = max(tops[i], float(np.max(data[i])))
                        lows[i] = min(lows[i], float(np.min(data[i])))
            else:
                mean = stats["mean"].loc[labs, m].to_numpy(float)
                std = stats["std"].loc[labs, m].to_numpy(float)
                err = np.where(np.isfinite(std), std, 0.0)
                ok = np.isfinite(mean)
                ax.bar(pos[ok], mean[ok], w * 0.9, yerr=err[ok], color=colors[j], edgecolor="none",
                       error_kw={"elinewidth": 0.5, "ecolor": "0.3", "capsize": 0})
                tops[ok] = np.maximum(tops[ok], mean[ok] + err[ok])
                lows[ok] = np.minimum(lows[ok], mean[ok] - err[ok])
        finite = np.isfinite(tops)
        mark = spec.get("mark_best")
        star_x = x - group / 2 + w * (ids.index(str(mark)) + 0.5) if mark is not None else x
        for i, lab in enumerate(labs):  # above the marked method's bar / box, at the top of the label's group
            if bool(stats["best"].get(lab, False)) and finite[i]:
                ax.annotate("*", (star_x[i], tops[i]), xytext=(0, 1), textcoords="offset points", ha="center",
                            va="bottom", fontsize=11, fontweight="bold")
        if finite.any():
            hi = float(tops[finite].max())
            lo = float(lows[np.isfinite(lows)].min()) if np.isfinite(lows).any() else 0.0
            lo = 0.0 if style == "bar" and lo >= 0 else lo
            ax.set_ylim(lo, hi + 0.12 * (hi - lo or 1.0))
        ax.set_xticks(x)
        ax.set_xticklabels(labs, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
        ax.set_xlim(-0.6, len(labs) - 0.4)
        ax.set_ylabel(info.header)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=colors[j], label=str(lab)) for j, lab in enumerate(legend)]
    axes[0].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), framealpha=0.9)
    title = spec.get("title", "")
    if spec.get("mark_best") is not None:
        name = legend[ids.index(str(spec["mark_best"]))]
        title = f"{title}\n{best_count_line(spec, stats, name)}"
    fig.suptitle(f"{title}\n{stats['dataset']}: {stats['n_labels']} labels" if title else stats["dataset"],
                 fontsize=10)
    bottom = _footer(fig, footer, height)
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    return fig


def _method_colors(n: int) -> list:
    """One distinct colour per method: tab10 up to 10 methods, then tab20, then evenly spaced hues."""
    import seaborn as sns

    if n <= 10:
        return sns.color_palette("tab10", n)
    if n <= 20:
        return sns.color_palette("tab20", n)
    return sns.color_palette("husl", n)


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------


def _panel_inputs(spec: Mapping[str, Any], exp: Mapping[str, Any], reg_root: Path, prep_root: Path, where: str):
    """What a panel figure (``difference``, ``qualitative``) reads: ``(dataset, dataset config, fold, {display
    name: registration folder}, the subset of those with a ``pairs.tsv``, cases.tsv)``, or ``None`` with a warning
    when ``cases.tsv`` or every method's folder is absent (the committed figure is then kept)."""
    dataset = str(spec.get("dataset") or evaluated_datasets(exp)[0])
    dcfg = exp["datasets"][dataset]
    fold = spec.get("fold", dcfg["folds"][0])
    ids = [str(m) for m in spec["methods"]]
    if spec.get("labels"):
        names = [str(x) for x in spec["labels"]]
    else:
        names = tables._display_index(ids, {m: str((exp["methods"].get(m) or {}).get("name", m)) for m in ids})
    dirs = {n: Path(reg_root) / dataset / m / f"fold{fold}" for n, m in zip(names, ids)}
    present = {n: d for n, d in dirs.items() if (d / "pairs.tsv").is_file()}
    cases = Path(prep_root) / dataset / "cases.tsv"
    if not present or not cases.is_file():
        log.warning("%s: registration outputs under %s or %s are absent; keeping the existing figure",
                    where, Path(reg_root) / dataset, cases)
        return None
    return dataset, dcfg, fold, dirs, present, cases


def qualitative_figure(spec: Mapping[str, Any], exp: Mapping[str, Any], reg_root: Path, prep_root: Path,
                       out_dir: Path, where: str = "report.figures") -> list[Path]:
    """A named qualitative panel (``kind: qualitative``; e.g. Ding et al. 2021, Fig. 2): the layout of
    ``fig_qualitative`` (:func:`regbench.report.figures.qualitative_panel`: fixed and moving images with their
    label contours, then per method the warped image with the fixed and warped label contours, the field and
    its Jacobian determinant) for ``spec["methods"]`` on ``spec["pair"]`` (default ``report.qualitative_pair``,
    else the first test pair) of ``spec["dataset"]`` (default the first evaluated one), ``spec["fold"]``
    (default its first).

    Returns:
        The written files (``<out_dir>/<name>.png`` and ``.pdf``), or ``[]`` with a warning (the committed
        figure is kept) when ``cases.tsv`` or every method's registration folder is absent.
    """
    from . import figures

    found = _panel_inputs(spec, exp, reg_root, prep_root, where)
    if found is None:
        return []
    dataset, dcfg, fold, _, present, cases = found
    pair = spec.get("pair") or (exp.get("report") or {}).get("qualitative_pair")
    return list(figures.qualitative_from_dirs(
        cases, present, str(pair) if pair else None, dcfg["modality"], Path(out_dir) / spec["name"],
        title=f"{spec.get('title', '')} ({dataset}, fold {fold})", slice_axis=spec.get("slice_axis"),
        seg=dcfg.get("seg", "seg"), orientation=(exp.get("report") or {}).get("qualitative_orientation", "ras"),
    ).values())


def difference_figure(spec: Mapping[str, Any], exp: Mapping[str, Any], reg_root: Path, prep_root: Path,
                      footer: str | None = None, where: str = "report.figures") -> Figure | None:
    """Registration results and difference maps (``kind: difference``; Zhu et al. 2021, Figs. 9-10) of
    ``spec["methods"]`` on ``spec["pairs"]`` (default ``report.qualitative_pair``, else the first pair) of
    ``spec["dataset"]`` (default the first) and ``spec["fold"]`` (default its first), read from
    ``<reg_root>/<dataset>/<method>/fold<k>/pairs.tsv`` and ``<prep_root>/<dataset>/cases.tsv`` by
    :func:`regbench.report.figures.difference_from_dirs`.

    Returns:
        The figure, or ``None`` (with a warning; the committed figure is kept) when ``cases.tsv`` or every
        method's registration folder is absent (a reviewer re-rendering from committed metrics). A method
        without its folder gets "n/a" panels.
    """
    from . import figures

    found = _panel_inputs(spec, exp, reg_root, prep_root, where)
    if found is None:
        return None
    dataset, dcfg, fold, dirs, present, cases = found
    absent = [n for n in dirs if n not in present]
    if absent:
        log.warning("%s: no registration outputs of %s under %s; their panels are n/a", where, absent, reg_root)
    pair_ids = spec.get("pairs") or ([exp["report"]["qualitative_pair"]]
                                     if (exp.get("report") or {}).get("qualitative_pair") else None)
    try:
        return figures.difference_from_dirs(
            cases, {n: present.get(n) for n in dirs}, [str(p) for p in pair_ids] if pair_ids else None,
            dcfg["modality"], title=f"{spec.get('title', '')} ({dataset}, fold {fold})", footer=footer,
            slice_axis=spec.get("slice_axis"), slice_index=spec.get("slice_index"),
            orientation=(exp.get("report") or {}).get("qualitative_orientation", "ras"))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc.args[0]}") from exc


def render_extras(
    exp: Mapping[str, Any],
    pairs: pd.DataFrame,
    aux: pd.DataFrame | None,
    out_dir: Path,
    prov: Mapping[str, Any] | None,
    notes: Sequence[str],
    *,
    labels: pd.DataFrame | None = None,
    reg_root: Path | None = None,
    prep_root: Path | None = None,
) -> list[Path]:
    """Write every extra table and figure of ``exp["report"]`` into ``out_dir``; return the written paths.

    Args:
        exp: validated experiment config; uses ``report.tables`` and ``report.figures`` (see the module
            docstring). Nothing is written (``[]``) when both are absent.
        pairs: per-pair table (:func:`tables.per_pair`) of all datasets and methods.
        aux: aux metrics (:func:`tables.load_aux_metrics`), or ``None`` when none were given.
        out_dir: ``results/<experiment>``.
        prov: provenance record (:func:`regbench.provenance.collect`), written into every table.
        notes: the experiment's notes (protocol, SCALED-DOWN line, statistics), written under every table;
            for auxiliary tables :data:`tables.PAIR_STATS_NOTE` is replaced by :data:`tables.AUX_STATS_NOTE`,
            for per-label tables by :data:`tables.LABEL_STATS_NOTE`.
            The SCALED-DOWN line (or :func:`provenance.scale_note`) is printed as every figure's footer.
        labels: label-level metrics for the per-label tables and figures (default: the rows ``pairs`` was
            made from, :func:`tables.label_rows`).
        reg_root, prep_root: roots of the registration outputs and prepared data read by ``kind:
            difference`` figures (default ``work/<experiment>/reg`` and ``data/prep/<experiment>``, as
            :func:`regbench.report.experiment.render_experiment`); when absent the committed figure is kept.

    Files: ``<name>.{md,csv,tex}`` per table, ``<name>.{png,pdf}`` per figure (:func:`extra_outputs`).

    Raises:
        ConfigError: an item fails :func:`check_inputs` (it fails :func:`check_extras`, names a method id
            without rows in ``pairs`` or an aux id without rows in ``aux``, or an auxiliary table is
            configured but ``aux`` is ``None``, or a per-label item names a missing dataset, method or
            label) or names a missing metric (the message names the table or figure).
        DataError: a per-label item without label-level metrics.
    """
    check_inputs(exp, pairs, aux, labels)
    tabs, figs = _items(exp, "tables"), _items(exp, "figures")
    if not tabs and not figs:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = [str(n) for n in notes or [] if n]
    written: list[Path] = []
    for i, t in enumerate(tabs):
        where = _where("tables", i, t)
        form = table_form(t)
        if form == "labels":
            table = label_table(t, pairs, where, labels)
            tnotes = _table_notes(t, table, notes)
        elif form == "datasets":
            table = dataset_table(t, pairs, where)
            tnotes = _table_notes(t, table, notes)
        elif "methods" in t:
            table = method_table(t, pairs, where, paired_test=(exp.get("report") or {}).get("paired_test") or "wilcoxon")
            tnotes = notes
        else:
            table = auxiliary_table(t, aux, where)
            tnotes = [n for n in notes if n != tables.PAIR_STATS_NOTE] + [tables.AUX_STATS_NOTE]
        written += tables.write_table(table, out_dir / t["name"], t["title"], prov, tnotes).values()

    if figs:
        from . import figures

        footer = scale_line(notes, prov)
        name = str(exp.get("experiment", ""))
        for i, f in enumerate(figs):
            where = _where("figures", i, f)
            if f["kind"] == "qualitative":
                written += qualitative_figure(f, exp, Path(reg_root) if reg_root else Path("work") / name / "reg",
                                              Path(prep_root) if prep_root else Path("data") / "prep" / name,
                                              out_dir, where)
                continue
            if f["kind"] == "difference":
                fig = difference_figure(f, exp, Path(reg_root) if reg_root else Path("work") / name / "reg",
                                        Path(prep_root) if prep_root else Path("data") / "prep" / name, footer, where)
                if fig is None:
                    continue
            elif f["kind"] == "per_label":
                fig = per_label_figure(f, pairs, footer, where, labels)
            else:
                draw = bar_figure if f["kind"] == "bar" else box_figure
                fig = draw(f, pairs, footer, where)
            written += figures.save_figure(fig, out_dir / f["name"]).values()
    log.info("wrote %d extra report files to %s", len(written), out_dir)
    return written
