"""Rendering of the benchmark's tables and figures, each stamped with the run's provenance.

Tables (:mod:`regbench.report.tables`)::

    df = load_metrics(tsv_paths)                   # label-level rows
    pairs = per_pair(df)                           # one row per (dataset, method, fold, pair_id)
    tab = summary_table(pairs, ["dsc", "hd95", "folding_pct", "sdlogj", "runtime_s"],
                        method_order=[...], reference="voxelmorph", paper_values={...})
    write_table(tab, Path("results/tables/oasis_summary"), "OASIS: test set", prov, notes=[...])

Figures (:mod:`regbench.report.figures`, imported on first use because it loads matplotlib/seaborn)::

    boxplots(pairs, ["dsc", "hd95"], Path("results/figures/oasis_box"))
    qualitative_from_dirs(cases_tsv, {"VoxelMorph": reg_dir, ...}, None, "t1", Path("results/figures/oasis_qual"))

Provenance: :mod:`regbench.provenance` (``collect``, ``provenance_markdown``, ``scale_note``).
"""

from __future__ import annotations

from .tables import (
    METRICS,
    MetricInfo,
    latex_escape,
    load_metrics,
    metric_info,
    numeric_table,
    per_label_table,
    per_pair,
    resolve_metric,
    summary_table,
    write_table,
)

_FIGURES = ("boxplots", "qualitative_panel", "qualitative_from_dirs", "save_figure")

__all__ = [
    "METRICS",
    "MetricInfo",
    "latex_escape",
    "load_metrics",
    "metric_info",
    "numeric_table",
    "per_label_table",
    "per_pair",
    "resolve_metric",
    "summary_table",
    "write_table",
    *_FIGURES,
]


def __getattr__(name: str):
    """Lazily expose the figure functions (keeps ``import regbench.report`` free of matplotlib)."""
    if name in _FIGURES:
        from . import figures

        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
