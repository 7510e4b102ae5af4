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

* ``report.figures`` (one ``results/<experiment>/<name>.{png,pdf}`` per item):

  - ``kind: bar``: one ``metric``; x = dataset, one bar per method with mean ± std (``ddof=1``) error bar
    over test pairs and the mean printed above the bar. Paper Fig. 8 (SSIM of the attention-cleaned image
    with and without the SSIM loss: ``metric: ssim_clean``).
  - ``kind: box``: ``metrics`` (one subplot row each) x datasets (one subplot column each); x = methods
    (tick ``labels``, e.g. the number of fused scales), box plot of the per-pair values with the mean marked
    by an asterisk. Paper Fig. 9 (number of fused scales 1..4).

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

from ..errors import ConfigError
from ..utils import get_logger
from . import budget, tables
from .common import FIGURE_SUFFIXES, TABLE_SUFFIXES, _footer, scale_line

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure

log = get_logger(__name__)

#: File stems written by :func:`regbench.report.experiment.render_experiment` itself.
RESERVED_NAMES = frozenset({"table", "table_dsc_per_label", "fig_boxplots", "fig_qualitative", "provenance"})
FIGURE_KINDS = ("bar", "box")


def _items(exp: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    return list((exp.get("report") or {}).get(key) or [])


def _where(key: str, i: int, item: Mapping[str, Any]) -> str:
    return f"report.{key}[{i}] ({item.get('name', '?')!r})"


def check_extras(exp: Mapping[str, Any]) -> None:
    """Check ``report.tables`` / ``report.figures`` beyond what the schema can express.

    Checks: names (of tables, figures, ``report.budget_series`` and ``report.training_curves`` items,
    :func:`regbench.report.budget.check_series`) are unique and not one of :data:`RESERVED_NAMES`; a table has exactly one of
    ``methods`` / ``auxiliary`` and ``reference`` only with ``methods`` and among them; a figure has a known
    ``kind`` with ``metric`` (bar) or ``metrics`` (box) and ``labels`` as long as ``methods``; every method
    id is declared in ``exp["methods"]`` and every auxiliary id in ``exp["auxiliary"]`` (when the experiment
    declares them).

    Raises:
        ConfigError: naming the table/figure and what is wrong.
    """
    declared = set((exp.get("methods") or {}).keys())
    seen: dict[str, str] = {}

    def name_ok(where: str, item: Mapping[str, Any]) -> None:
        name = str(item.get("name") or "")
        if not name:
            raise ConfigError(f"{where}: no name")
        if name in RESERVED_NAMES:
            raise ConfigError(f"{where}: name {name!r} is reserved for the main outputs {sorted(RESERVED_NAMES)}")
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

    for i, t in enumerate(_items(exp, "tables")):
        where = _where("tables", i, t)
        name_ok(where, t)
        if not t.get("metrics"):
            raise ConfigError(f"{where}: no metrics")
        has_m, has_a = "methods" in t, "auxiliary" in t
        if has_m == has_a:
            raise ConfigError(f"{where}: give exactly one of 'methods' (registration methods) or 'auxiliary' "
                              f"(auxiliary networks); got {'both' if has_m else 'neither'}")
        if has_m:
            methods_ok(where, t["methods"])
            ref = t.get("reference")
            if ref is not None and ref not in t["methods"]:
                raise ConfigError(f"{where}: reference {ref!r} is not one of its methods {list(t['methods'])}")
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
        methods_ok(where, f.get("methods") or [])
        labels = f.get("labels")
        if labels is not None and len(labels) != len(f["methods"]):
            raise ConfigError(f"{where}: {len(labels)} labels for {len(f['methods'])} methods")
        if kind == "bar" and not f.get("metric"):
            raise ConfigError(f"{where}: a bar figure needs 'metric' (one column, e.g. ssim_clean)")
        if kind == "box" and not f.get("metrics"):
            raise ConfigError(f"{where}: a box figure needs 'metrics' (a list of columns)")
    budget.check_series(exp, {**seen, **dict.fromkeys(RESERVED_NAMES, "the main outputs")})


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


def check_inputs(exp: Mapping[str, Any], pairs: pd.DataFrame, aux: pd.DataFrame | None) -> None:
    """:func:`check_extras`, then check that every method id of ``report.tables`` / ``report.figures`` has
    rows in ``pairs`` and every auxiliary id has rows in ``aux`` (so a bad config fails before any output).

    Raises:
        ConfigError: naming the table or figure and the missing method ids, aux ids or aux metrics.
    """
    check_extras(exp)
    for key in ("tables", "figures"):
        for i, item in enumerate(_items(exp, key)):
            where = _where(key, i, item)
            if "methods" in item:
                _require_methods(where, [str(m) for m in item["methods"]], pairs)
            if "auxiliary" in item:
                _require_aux(where, [str(a) for a in item["auxiliary"]], aux)


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


def method_table(spec: Mapping[str, Any], pairs: pd.DataFrame, where: str = "report.tables") -> pd.DataFrame:
    """Registration-method table (paper Table 4): the main table restricted to ``spec["methods"]``.

    Per dataset (first-appearance order) :func:`tables.summary_table` of the listed methods present there,
    in the listed order, with ``paper_values[dataset]`` and the Wilcoxon test vs ``spec["reference"]``
    (skipped, with a warning, in a dataset without the reference); stacked by
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
                                     paper_values=paper.get(dataset))
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
    sub = pairs[pairs["method"].astype(str).isin(ids)]
    datasets = _datasets(sub)
    col = _resolve(where, sub, spec["metric"])
    info = tables.metric_info(col)
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
            v = _values(sub, d, m, col)
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
    sub = pairs[pairs["method"].astype(str).isin(ids)].copy()
    sub["_x"] = sub["method"].astype(str).map(lab_of)
    datasets = _datasets(sub)
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
            vals = dsub[["_x", col]].copy()
            vals[col] = pd.to_numeric(vals[col], errors="coerce")
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
            ax.set_ylabel(tables.metric_info(col).header)
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


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------


def render_extras(
    exp: Mapping[str, Any],
    pairs: pd.DataFrame,
    aux: pd.DataFrame | None,
    out_dir: Path,
    prov: Mapping[str, Any] | None,
    notes: Sequence[str],
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
            for auxiliary tables :data:`tables.PAIR_STATS_NOTE` is replaced by :data:`tables.AUX_STATS_NOTE`.
            The SCALED-DOWN line (or :func:`provenance.scale_note`) is printed as every figure's footer.

    Files: ``<name>.{md,csv,tex}`` per table, ``<name>.{png,pdf}`` per figure (:func:`extra_outputs`).

    Raises:
        ConfigError: an item fails :func:`check_inputs` (it fails :func:`check_extras`, names a method id
            without rows in ``pairs`` or an aux id without rows in ``aux``, or an auxiliary table is
            configured but ``aux`` is ``None``) or names a missing metric (the message names the table or
            figure).
    """
    check_inputs(exp, pairs, aux)
    tabs, figs = _items(exp, "tables"), _items(exp, "figures")
    if not tabs and not figs:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = [str(n) for n in notes or [] if n]
    written: list[Path] = []
    for i, t in enumerate(tabs):
        where = _where("tables", i, t)
        if "methods" in t:
            table, tnotes = method_table(t, pairs, where), notes
        else:
            table = auxiliary_table(t, aux, where)
            tnotes = [n for n in notes if n != tables.PAIR_STATS_NOTE] + [tables.AUX_STATS_NOTE]
        written += tables.write_table(table, out_dir / t["name"], t["title"], prov, tnotes).values()

    if figs:
        from . import figures

        footer = scale_line(notes, prov)
        for i, f in enumerate(figs):
            where = _where("figures", i, f)
            draw = bar_figure if f["kind"] == "bar" else box_figure
            fig = draw(f, pairs, footer, where)
            written += figures.save_figure(fig, out_dir / f["name"]).values()
    log.info("wrote %d extra report files to %s", len(written), out_dir)
    return written
