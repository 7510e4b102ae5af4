"""Training-budget series: how a learned method's test metrics move with its number of training steps.

The same method (same data, splits, test pairs, seeds and losses) is trained in several experiments that
differ only in their step cap, e.g. He et al. 2022's proposed method and AC-RegNet at 300
(``config/papers/he2022.yaml``), 1000 (``he2022/studies/steps_1000.yaml``) and 4000 steps (``he2022/studies/steps_4000.yaml``). The
experiment that renders the series lists the runs in its ``report.budget_series`` block and reads the other
experiments' committed per-pair metrics (``results/<experiment>/metrics/<dataset>/<method>/fold<k>.tsv``);
its own come from the report's metrics. This is evidence for how far a CPU-budget run is from convergence,
never a way of choosing a budget: the runs' step counts are fixed in their configs before any test result.

Config (``report:`` block of the experiment that renders the series)::

    budget_series:
      - name: training_budget           # results/<experiment>/training_budget.{md,csv,tex,png,pdf}
        title: "Test DSC vs training steps"
        methods: [he2022, acregnet]     # method ids, the same in every run
        metrics: [dsc, folding_count]
        runs:                           # ascending steps; one of them may be this experiment itself
          - {experiment: he2022, steps: 300, note: "auxiliary networks trained 300 steps"}
          - {experiment: he2022/studies/steps_1000, steps: 1000}
          - {experiment: he2022/studies/steps_4000, steps: 4000}

A second block, ``report.training_curves``, draws the training logs (``train_log.tsv``) of the experiment's own
learned methods, so a reader can see whether a run was still improving, had converged or diverged::

    training_curves:
      - name: fig_training           # results/<experiment>/fig_training.{png,pdf}
        title: "Training loss"
        methods: [he2022, acregnet]
        terms: [loss, ncc, ce]       # train_log.tsv columns (default: every loss column)
        window: 50                   # moving average over this many steps (default 50)

Outputs per budget-series item: a table (rows dataset x method x steps; mean ± std over test pairs of each metric, the
paper's value from ``report.paper_values`` beside ours, ``n_pairs``, and a paired two-sided Wilcoxon
signed-rank p of DSC against the previous budget on the same pairs) and a figure (one row per metric, one
column per dataset; x = training steps on a log axis, mean ± std per method, the paper's value as a dashed
line in the method's colour). Every output carries the experiment's notes (SCALED-DOWN line included).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..config import evaluated_datasets
from ..errors import ConfigError, DataError
from ..utils import get_logger
from . import tables
from .common import FIGURE_SUFFIXES, TABLE_SUFFIXES, _footer, scale_line

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = get_logger(__name__)

STEPS = "Training steps"
P_PREV = "p vs previous budget (Wilcoxon, DSC)"


def items(exp: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``report.budget_series`` items of ``exp`` (``[]`` when absent)."""
    return list((exp.get("report") or {}).get("budget_series") or [])


def check_series(exp: Mapping[str, Any], taken: Mapping[str, str] | None = None) -> None:
    """Check every ``report.budget_series`` item beyond the schema.

    Checks: a unique ``name`` not in ``taken`` (stems of other report outputs -> where they come from);
    ``methods`` declared in ``exp["methods"]`` and learned; at least two ``runs`` with distinct experiment
    names and strictly ascending positive ``steps``.

    Raises:
        ConfigError: naming the item and what is wrong.
    """
    taken = dict(taken or {})
    declared = exp.get("methods") or {}
    for i, item in enumerate(items(exp)):
        where = f"report.budget_series[{i}] ({item.get('name', '?')!r})"
        name = str(item.get("name") or "")
        if not name:
            raise ConfigError(f"{where}: no name")
        if name in taken:
            raise ConfigError(f"{where}: name {name!r} is already used by {taken[name]}")
        taken[name] = where
        methods = [str(m) for m in item.get("methods") or []]
        if not methods:
            raise ConfigError(f"{where}: empty methods list")
        bad = [m for m in methods if m not in declared or declared[m].get("kind") != "learned"]
        if declared and bad:
            raise ConfigError(f"{where}: method id(s) {bad} are not learned methods of this experiment; "
                              f"learned methods: {sorted(k for k, v in declared.items() if v.get('kind') == 'learned')}")
        runs = list(item.get("runs") or [])
        if len(runs) < 2:
            raise ConfigError(f"{where}: a series needs at least two runs, got {len(runs)}")
        names = [str(r.get("experiment")) for r in runs]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: an experiment appears twice in runs {names}")
        steps = [r.get("steps") for r in runs]
        if not all(isinstance(s, int) and s > 0 for s in steps) or any(b <= a for a, b in itertools.pairwise(steps)):
            raise ConfigError(f"{where}: runs need positive integer steps in strictly ascending order; got {steps}")
    for i, item in enumerate(curve_items(exp)):
        where = f"report.training_curves[{i}] ({item.get('name', '?')!r})"
        name = str(item.get("name") or "")
        if not name or name in taken:
            raise ConfigError(f"{where}: name {name!r} is empty or already used by {taken.get(name)}")
        taken[name] = where
        bad = [m for m in item.get("methods") or [] if m not in declared or declared[m].get("kind") != "learned"]
        if declared and (bad or not item.get("methods")):
            raise ConfigError(f"{where}: method id(s) {bad or '[]'} are not learned methods of this experiment")


def curve_items(exp: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``report.training_curves`` items of ``exp`` (``[]`` when absent)."""
    return list((exp.get("report") or {}).get("training_curves") or [])


def outputs(exp: Mapping[str, Any]) -> list[str]:
    """File names, relative to ``results/<experiment>/``, of every budget series (``<name>.{md,csv,tex,png,pdf}``)
    and every training-curve figure (``<name>.{png,pdf}``)."""
    out = [f"{it['name']}.{ext}" for it in items(exp) for ext in (*TABLE_SUFFIXES, *FIGURE_SUFFIXES)]
    return out + [f"{it['name']}.{ext}" for it in curve_items(exp) for ext in FIGURE_SUFFIXES]


def input_files(exp: Mapping[str, Any], results_root: str | Path = "results") -> list[str]:
    """Metrics TSVs of the *other* experiments a budget series reads (for the Snakemake report rule's inputs).

    One ``<results_root>/<run experiment>/metrics/<dataset>/<method>/fold<k>.tsv`` per run other than ``exp``
    itself, dataset and fold of ``exp``, and method of the series; sorted, without duplicates.
    """
    own = exp.get("experiment")
    out = set()
    for item in items(exp):
        for run in item["runs"]:
            if run["experiment"] == own:
                continue
            for d in evaluated_datasets(exp):
                for m in item["methods"]:
                    for f in exp["datasets"][d]["folds"]:
                        out.add(f"{results_root}/{run['experiment']}/metrics/{d}/{m}/fold{f}.tsv")
    return sorted(out)


def load_runs(item: Mapping[str, Any], exp: Mapping[str, Any], pairs: pd.DataFrame,
              results_root: Path) -> pd.DataFrame:
    """Per-pair metrics of every run of a series, with ``steps`` and ``run`` (experiment name) columns.

    Args:
        item: one ``report.budget_series`` item.
        exp: the rendering experiment (its datasets and folds select the files of other runs).
        pairs: per-pair metrics of the rendering experiment (:func:`tables.per_pair`), used for the run
            named like ``exp["experiment"]``.
        results_root: folder holding ``<experiment>/metrics/...`` of the other runs (normally ``results``).

    Returns:
        Rows of the series' methods only, one per (run, dataset, method, fold, pair_id).

    Raises:
        DataError: a metrics file of another run is missing (the message names it and the experiment to
            run), or the runs registered different test pairs for a (dataset, method) (not comparable).
    """
    own = exp.get("experiment")
    methods = [str(m) for m in item["methods"]]
    frames = []
    for run in item["runs"]:
        name = str(run["experiment"])
        if name == own:
            df = pairs
        else:
            paths = [results_root / name / "metrics" / d / m / f"fold{f}.tsv"
                     for d in evaluated_datasets(exp) for m in methods for f in exp["datasets"][d]["folds"]]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise DataError(f"budget series {item['name']!r}: metrics of run {name!r} are missing: "
                                f"{missing[:3]}{' ...' if len(missing) > 3 else ''}; run that experiment first "
                                f"(snakemake --cores all --resources gpu=1 --configfile config/papers/{name}.yaml)")
            df = tables.per_pair(tables.load_metrics(paths))
        sub = df[df["method"].astype(str).isin(methods)].copy()
        sub["steps"] = int(run["steps"])
        sub["run"] = name
        frames.append(sub)
    out = pd.concat(frames, ignore_index=True, sort=False)
    for (d, m), g in out.groupby(["dataset", "method"], sort=False):
        sets = {r: frozenset(zip(s["fold"].astype(str), s["fixed"].astype(str), s["moving"].astype(str)))
                for r, s in g.groupby("run", sort=False)}
        first = next(iter(sets.values()))
        if any(s != first for s in sets.values()):
            sizes = {r: len(s) for r, s in sets.items()}
            raise DataError(f"budget series {item['name']!r}: dataset {d!r}, method {m!r}: the runs registered "
                            f"different test pairs ({sizes} pairs); a budget series needs the same pairs in every run")
    return out


def series_table(item: Mapping[str, Any], runs: pd.DataFrame,
                 paper_values: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Display table of a series: per dataset, rows method x steps (ascending), see the module docstring.

    Args:
        item: the ``report.budget_series`` item (``methods``, ``metrics``, ``runs``).
        runs: output of :func:`load_runs`.
        paper_values: ``report.paper_values`` of the experiment (``{dataset: {method: {metric: value}}}``).

    Returns:
        The stacked display table (:func:`tables.combine_datasets`) with a ``Training steps`` column and
        ``p vs previous budget (Wilcoxon, DSC)`` (``—`` for the smallest budget).

    Raises:
        ConfigError: a metric column is missing.
    """
    paper_values = paper_values or {}
    out = []
    for dataset in dict.fromkeys(runs["dataset"].astype(str)):
        d = runs[runs["dataset"].astype(str) == dataset].copy()
        rows, paper, p_prev, steps_of = [], {}, {}, {}
        for m in item["methods"]:
            dm = d[d["method"].astype(str) == m]
            if dm.empty:
                continue
            name = str(dm["method_name"].iloc[0])
            prev = None
            for steps in sorted(dm["steps"].unique()):
                key = f"{m}@{steps}"
                cur = dm[dm["steps"] == steps].assign(method=key, method_name=f"{name}, {int(steps)} steps")
                rows.append(cur)
                steps_of[key] = int(steps)
                if m in (paper_values.get(dataset) or {}):
                    paper[key] = paper_values[dataset][m]
                if prev is not None:
                    a = prev.set_index(["fold", "fixed", "moving"])["dsc"]
                    b = cur.set_index(["fold", "fixed", "moving"])["dsc"].reindex(a.index)
                    ok = a.notna() & b.notna()
                    p_prev[key] = tables._wilcoxon_p(
                        b[ok].to_numpy(float), a[ok].to_numpy(float), 5)
                prev = cur
        if not rows:
            continue
        sub = pd.concat(rows, ignore_index=True)
        order = list(dict.fromkeys(sub["method"]))
        try:
            t = tables.summary_table(sub, item["metrics"], method_order=order, paper_values=paper)
        except KeyError as exc:
            raise ConfigError(f"budget series {item['name']!r}: dataset {dataset!r}: {exc.args[0]}") from exc
        numeric = tables.numeric_table(t)  # indexed by the ids (``order``), row-aligned with the display table
        ids = [str(i) for i in numeric.index]
        t.insert(0, STEPS, [steps_of[i] for i in ids])
        t[P_PREV] = [tables._fmt_p(p_prev[i]) if i in p_prev else tables.DASH for i in ids]
        numeric.insert(0, "steps", [steps_of[i] for i in ids])
        numeric["p_prev"] = [p_prev.get(i, math.nan) for i in ids]
        t.attrs["numeric"] = numeric.to_dict(orient="tight")
        out.append((dataset, t))
    if not out:
        raise DataError(f"budget series {item['name']!r}: no rows for methods {list(item['methods'])}")
    return tables.combine_datasets(out)


def series_figure(item: Mapping[str, Any], runs: pd.DataFrame, paper_values: Mapping[str, Any] | None = None,
                  footer: str | None = None) -> Figure:
    """Figure of a series: rows = ``item["metrics"]``, columns = datasets; x = training steps (log axis).

    Each method is a line through its per-budget means with ± 1 sample std error bars over test pairs; the
    paper's value for the method (from ``paper_values``, the mean of ``"a ± b"``) is a dashed line of the same
    colour. ``footer`` (the SCALED-DOWN line) is printed under the panels.

    Raises:
        ConfigError: a metric column is missing.
    """
    import seaborn as sns

    from .figures import _new_figure

    paper_values = paper_values or {}
    datasets = list(dict.fromkeys(runs["dataset"].astype(str)))
    metrics = list(item["metrics"])
    methods = [str(m) for m in item["methods"]]
    colors = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    steps_all = sorted(int(s) for s in runs["steps"].unique())
    height = 2.8 * len(metrics) + 0.8
    fig = _new_figure(3.6 * len(datasets) + 0.6, height)
    axes = fig.subplots(len(metrics), len(datasets), squeeze=False)
    for r, metric in enumerate(metrics):
        for c, dataset in enumerate(datasets):
            ax = axes[r, c]
            d = runs[runs["dataset"].astype(str) == dataset]
            try:
                col = tables.resolve_metric(d.dropna(axis=1, how="all"), metric)
            except KeyError as exc:
                raise ConfigError(f"budget series {item['name']!r}: dataset {dataset!r}: {exc.args[0]}") from exc
            for k, m in enumerate(methods):
                dm = d[d["method"].astype(str) == m]
                if dm.empty:
                    continue
                stats = pd.to_numeric(dm[col], errors="coerce").groupby(dm["steps"]).agg(["mean", "std"])
                # tiny horizontal offsets so the error bars of two methods do not overlap
                x = stats.index.to_numpy(float) * (1.0 + 0.04 * (k - (len(methods) - 1) / 2))
                ax.errorbar(x, stats["mean"].to_numpy(float), yerr=stats["std"].to_numpy(float), marker="o", ms=4,
                            capsize=3, color=colors[m], label=str(dm["method_name"].iloc[0]))
                _, pmean, _ = tables._parse_paper(
                    tables._paper_lookup(paper_values.get(dataset) or {}, m, m, metric, col))
                if not math.isnan(pmean):
                    ax.axhline(pmean, color=colors[m], ls="--", lw=1.0, alpha=0.8,
                               label=f"{dm['method_name'].iloc[0]} (paper)")
            ax.set_xscale("log")
            ax.set_xticks(steps_all)
            ax.set_xticklabels([str(s) for s in steps_all])
            ax.minorticks_off()
            ax.set_xlabel(STEPS.lower() if r == len(metrics) - 1 else "")
            ax.set_ylabel(tables.metric_info(col).header)
            if r == 0:
                ax.set_title(dataset, fontsize=10)
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(item.get("title", ""), fontsize=10, y=1.0 - 0.08 / height, va="top")
    fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1.0 - 0.3 / height))
    bottom = _footer(fig, footer, height)
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0 - 0.6 / height))
    return fig


def _moving_average(v: pd.Series, window: int) -> pd.Series:
    return pd.to_numeric(v, errors="coerce").rolling(window, min_periods=1).mean()


def training_curves_figure(item: Mapping[str, Any], logs: Mapping[tuple[str, str], pd.DataFrame],
                           names: Mapping[str, str], footer: str | None = None) -> Figure:
    """Training curves: one row per method, one column per dataset; x = step, y = moving averages.

    Args:
        item: a ``report.training_curves`` item (``methods``, optional ``terms``, ``window``, ``title``).
        logs: ``{(dataset, method id): train_log.tsv as a DataFrame}`` (columns ``step``, the loss terms
            unweighted as logged, ``loss`` = the weighted total, ``elapsed_s``).
        names: method id -> display name.
        footer: the SCALED-DOWN line printed under the panels.
    """
    import seaborn as sns

    from .figures import _new_figure

    window = int(item.get("window", 50))
    methods = [str(m) for m in item["methods"]]
    datasets = list(dict.fromkeys(d for d, _ in logs))
    height = 2.6 * len(methods) + 0.9
    fig = _new_figure(3.8 * max(1, len(datasets)) + 0.4, height)
    axes = fig.subplots(len(methods), max(1, len(datasets)), squeeze=False)
    for r, m in enumerate(methods):
        for c, d in enumerate(datasets):
            ax = axes[r, c]
            log_df = logs.get((d, m))
            if log_df is None:
                ax.text(0.5, 0.5, "no training log", ha="center", va="center", transform=ax.transAxes, color="0.4")
                continue
            terms = [t for t in (item.get("terms") or [c for c in log_df.columns if c not in ("step", "elapsed_s")])
                     if t in log_df.columns]
            colors = dict(zip(terms, sns.color_palette("tab10", len(terms))))
            for t in terms:
                ax.plot(log_df["step"], _moving_average(log_df[t], window), lw=1.2 if t == "loss" else 0.9,
                        color="black" if t == "loss" else colors[t], label=t)
            ax.set_title(f"{d}: {names.get(m, m)}", fontsize=9)
            ax.set_xlabel("training step" if r == len(methods) - 1 else "")
            ax.set_ylabel(f"moving average ({window} steps)" if c == 0 else "")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper right", ncol=len(terms))
    fig.suptitle(item.get("title", ""), fontsize=10, y=1.0 - 0.08 / height, va="top")
    bottom = _footer(fig, footer, height)
    # absolute margins (inches): the title line on top, the footer below; small padding so that a single
    # row of panels is not left floating between them
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0 - 0.3 / height), pad=0.6, h_pad=1.2)
    return fig


def render_curves(exp: Mapping[str, Any], out_dir: Path, models_root: Path, footer: str | None) -> list[Path]:
    """Write every ``report.training_curves`` figure from ``<models_root>/<dataset>/<method>/fold<k>/train_log.tsv``
    (first fold of each dataset). When no log is present (a reviewer regenerating tables from committed
    metrics without ``work/``) the existing figure is kept and a warning is logged."""
    from . import figures

    written: list[Path] = []
    names = {m: str(v.get("name", m)) for m, v in (exp.get("methods") or {}).items()}
    for item in curve_items(exp):
        logs = {}
        for d, dcfg in exp["datasets"].items():
            for m in item["methods"]:
                p = Path(models_root) / d / m / f"fold{dcfg['folds'][0]}" / "train_log.tsv"
                if p.is_file():
                    logs[(d, m)] = pd.read_csv(p, sep="\t")
        if not logs:
            log.warning("no training logs under %s; keeping the existing %s figure", models_root, item["name"])
            continue
        fig = training_curves_figure(item, logs, names, footer)
        written += figures.save_figure(fig, Path(out_dir) / item["name"]).values()
    return written


def render_series(exp: Mapping[str, Any], pairs: pd.DataFrame, out_dir: Path, prov: Mapping[str, Any] | None,
                  notes: Sequence[str], results_root: Path | None = None) -> list[Path]:
    """Write the table and figure of every ``report.budget_series`` item; return the written paths.

    Args:
        exp: validated experiment config.
        pairs: per-pair metrics of ``exp`` (:func:`tables.per_pair`).
        out_dir: ``results/<experiment>``.
        prov: provenance record written into the table.
        notes: the experiment's notes; each run's ``note`` and the per-run step counts are added.
        results_root: where the other runs' ``<experiment>/metrics`` live (default: ``out_dir`` less the
            experiment's name, e.g. ``results`` for ``results/he2022/studies/clip``).

    Raises:
        ConfigError, DataError: see :func:`check_series`, :func:`load_runs`, :func:`series_table`.
    """
    from . import figures

    check_series(exp)
    out_dir = Path(out_dir)
    if results_root is None:  # out_dir is <results_root>/<experiment>, whose name may hold folders
        parts = Path(str(exp.get("experiment", ""))).parts
        results_root = (out_dir.parents[len(parts) - 1] if parts and out_dir.parts[-len(parts):] == parts
                        else out_dir.parent)
    results_root = Path(results_root)
    paper_values = (exp.get("report") or {}).get("paper_values") or {}
    written: list[Path] = []
    for item in items(exp):
        runs = load_runs(item, exp, pairs, results_root)
        run_notes = ["Budget series: " + "; ".join(
            f"{r['steps']} steps = experiment {r['experiment']}" + (f" ({r['note']})" if r.get("note") else "")
            for r in item["runs"]) + ". Same test pairs in every run; p: paired Wilcoxon of DSC vs the previous "
            "budget. The step counts were fixed in the configs in advance, not chosen on these results."]
        table = series_table(item, runs, paper_values)
        written += tables.write_table(table, out_dir / item["name"], item["title"], prov,
                                      [*notes, *run_notes]).values()
        fig = series_figure(item, runs, paper_values, scale_line(notes, prov))
        written += figures.save_figure(fig, out_dir / item["name"]).values()
    return written
