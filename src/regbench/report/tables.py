"""Result tables: load per-label metrics, average per pair, summarise per method, write md/csv/tex.

Data flow::

    metrics TSVs (one row per test pair x label)
        -> load_metrics()         concatenated label-level DataFrame
        -> per_pair()             one row per (dataset, method, fold, pair_id)
        -> summary_table()        one row per method, "mean ± std" strings (+ numeric frame for the CSV)
        -> combine_datasets()     per-dataset tables stacked with a "Dataset" column (several datasets)
        -> write_table()          <stem>.md, <stem>.csv, <stem>.tex, each with the provenance record

    label-level rows (per_pair keeps a reference to them: label_rows(pairs))
        -> label_metric_table()   methods x labels, one block per metric, "mean ± std" over pairs per label
    per-pair rows
        -> dataset_columns_table() methods x datasets (e.g. run time per pair on each dataset)
       (both: optional percent scaling, the paper's value beside ours, the best of each column in bold)

    aux metrics TSVs (auxiliary networks of He et al. 2022: one row per test case)
        -> load_aux_metrics()     concatenated case-level DataFrame
        -> aux_summary_table()    one row per (dataset, auxiliary network), "mean ± std" over cases

Statistics conventions (stated once, used everywhere):

* The unit of analysis is the registered **pair**: label-wise metrics are first averaged over the labels of
  a pair (``nanmean``; labels are foreground labels), then summarised over pairs (all folds pooled).
* ``std`` is the **sample** standard deviation (``ddof=1``) over pairs. With a single valid pair the std is
  undefined: the cell shows the mean alone and the CSV has ``std`` = NaN.
* NaN values (e.g. a distance for a label absent from a pair) are skipped, so ``{metric}_n`` in the CSV may
  be smaller than ``n_pairs``.
* Paired tests: by default the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon`` defaults:
  ``zero_method="wilcox"``, ``method="auto"``); ``paired_test="ttest"`` gives the two-sided paired t-test
  (``scipy.stats.ttest_rel``; Cai et al. 2023 report paired t-tests). Each method is tested against a
  reference on per-pair DSC, pairs matched on ``(dataset, fold, pair_id)``, pairs with a NaN on either side
  dropped. No correction for multiple comparisons is applied.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..provenance import provenance_latex, provenance_lines, provenance_markdown
from ..utils import atomic_write_text, get_logger

log = get_logger(__name__)

#: Columns identifying one registered pair.
PAIR_KEYS: tuple[str, ...] = ("dataset", "method", "fold", "pair_id")
#: Metrics computed per label (averaged over labels by :func:`per_pair`); all other metrics are per pair.
LABEL_METRICS: tuple[str, ...] = ("dsc", "hd95_mm", "hd_mm", "assd_mm", "hd95_px", "hd_px", "assd_px")
#: Label-level columns dropped by :func:`per_pair`.
LABEL_COLUMNS: tuple[str, ...] = ("label", "label_name")
#: Columns identifying one test case of an auxiliary network (aux metrics TSVs, :func:`load_aux_metrics`).
AUX_KEYS: tuple[str, ...] = ("dataset", "aux", "fold", "case")

#: Statistics note printed under the per-pair tables (main table and registration-method extra tables).
PAIR_STATS_NOTE = (
    "Values are mean ± std (sample std, ddof=1) over test pairs; label-wise metrics are first averaged over "
    "the foreground labels of each pair. Runtime is per pair (registration only)."
)
#: Statistics note printed under auxiliary-network tables (:func:`aux_summary_table`).
AUX_STATS_NOTE = (
    "Auxiliary-network values are mean ± std (sample std, ddof=1) over test cases (one value per case, as in "
    "the aux metrics file; folds pooled)."
)

DASH = "—"
#: ``attrs`` key under which :func:`per_pair` keeps its label-level input (:func:`label_rows`).
LABEL_ROWS_ATTR = "regbench_label_rows"
#: Statistics note printed under per-label tables (:func:`label_metric_table`), instead of PAIR_STATS_NOTE.
LABEL_STATS_NOTE = (
    "Per-label values are mean ± std (sample std, ddof=1) over test pairs of that label's value (folds "
    "pooled; a label without a value in a pair is skipped)."
)
#: Best-value marks of :func:`label_metric_table` / :func:`dataset_columns_table` (Markdown bold, TeX \textbf).
BOLD_NOTE = (
    "Bold: the best value of each column (highest for ↑, lowest for ↓; ties all bold){block}, our values and "
    "the paper's marked separately (ours compared as displayed; the paper's where two or more rows have one)."
)


@dataclass(frozen=True)
class MetricInfo:
    """How a metric column is named, ordered and formatted.

    Attributes:
        column: column name in the metrics tables (``"hd95_mm"``).
        label: display name with unit (``"HD95 (mm)"``).
        higher_is_better: ``True`` (↑), ``False`` (↓) or ``None`` (no arrow).
        decimals: fixed decimals, or ``None`` for automatic (2 decimals, scientific below 0.01 or from 1e4).
    """

    column: str
    label: str
    higher_is_better: bool | None
    decimals: int | None

    @property
    def arrow(self) -> str:
        """``"↑"``, ``"↓"`` or ``""``."""
        return {True: "↑", False: "↓", None: ""}[self.higher_is_better]

    @property
    def header(self) -> str:
        """Display name with direction arrow, e.g. ``"HD95 (mm) ↓"``."""
        return f"{self.label} {self.arrow}".strip()

    def _spec(self, ref: float) -> str:
        if self.decimals is not None:
            return f".{self.decimals}f"
        a = abs(ref) if ref is not None and np.isfinite(ref) else 0.0
        return ".2e" if (a != 0.0 and (a < 0.01 or a >= 1e4)) else ".2f"

    def fmt(self, x: Any) -> str:
        """Format one number (``"—"`` for NaN/None)."""
        if x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x):
            return DASH
        return format(float(x), self._spec(float(x)))

    def fmt_mean_std(self, mean: float, std: float) -> str:
        """``"mean ± std"`` with the mean's number format for both; plain mean when ``std`` is NaN."""
        if mean is None or pd.isna(mean):
            return DASH
        spec = self._spec(float(mean))
        if std is None or pd.isna(std):
            return format(float(mean), spec)
        return f"{format(float(mean), spec)} ± {format(float(std), spec)}"


def _m(column: str, label: str, hib: bool | None, decimals: int | None) -> MetricInfo:
    return MetricInfo(column, label, hib, decimals)


#: Known metrics (column -> display info). Unknown columns get their own name, no arrow, 3 decimals.
METRICS: dict[str, MetricInfo] = {
    m.column: m
    for m in [
        _m("dsc", "DSC", True, 3),
        _m("hd95_mm", "HD95 (mm)", False, 2),
        _m("hd_mm", "HD (mm)", False, 2),
        _m("assd_mm", "ASSD (mm)", False, 2),
        _m("tre_mm", "TRE (mm)", False, 2),
        _m("tre_std_mm", "TRE SD (mm)", False, 2),
        _m("hd95_px", "HD95 (px)", False, 2),
        _m("hd_px", "HD (px)", False, 2),
        _m("assd_px", "ASSD (px)", False, 2),
        _m("tre_px", "TRE (px)", False, 2),
        _m("tre_std_px", "TRE SD (px)", False, 2),
        _m("folding_pct", "|J|≤0 (%)", False, 3),
        _m("folding_count", "|J|≤0 (count)", False, 1),
        _m("folding_count_native", "|J|≤0 at the predicted grid (count)", False, 1),
        _m("sdlogj", "SDlogJ", False, 3),
        _m("cc", "CC", True, 3),
        _m("ssim_clean", "SSIM (attention-cleaned)", True, 3),
        _m("uv_residual_vox", "U∘V residual (vox)", False, 3),
        _m("runtime_s", "Runtime (s)", False, None),
    ]
}


def metric_info(column: str) -> MetricInfo:
    """Display info of a metric column (see :data:`METRICS`); unknown columns get a neutral default."""
    return METRICS.get(column, MetricInfo(column, column, None, 3))


def percent_info(info: MetricInfo) -> MetricInfo:
    """Display info of a fraction metric shown in percent (x 100): ``"DSC"`` -> ``"DSC (%)"``, two decimals
    fewer (DSC: 1 decimal, as in papers that report DSC in %)."""
    label = re.sub(r"\s*\([^()]*\)$", "", info.label) + " (%)"
    dec = None if info.decimals is None else max(info.decimals - 2, 0)
    return MetricInfo(info.column, label, info.higher_is_better, dec)


def in_percent(percent: Iterable[str] | None, metric: str, col: str) -> bool:
    """Whether ``metric`` (resolved to column ``col``) is listed in ``percent`` (by name, column or base name)."""
    keys = {str(p) for p in percent or ()}
    return bool(keys & {metric, col, _base(col), _base(metric)})


def _base(name: str) -> str:
    return re.sub(r"_(mm|px)$", "", name)


def resolve_metric(df: pd.DataFrame, name: str) -> str:
    """Return the column of ``df`` holding metric ``name``, accepting unit-less or other-unit names.

    ``"hd95"``, ``"hd95_mm"`` and ``"hd95_px"`` all resolve to whichever of ``hd95_mm`` / ``hd95_px`` exists
    (exact match first, then ``_mm``, then ``_px``), so one metric list serves 3D (mm) and 2D (px) datasets.

    Raises:
        KeyError: no matching column; the message lists the metric-like columns available.
    """
    if name in df.columns:
        return name
    base = _base(name)
    for cand in (base, f"{base}_mm", f"{base}_px"):
        if cand in df.columns:
            return cand
    avail = [c for c in df.columns if c in METRICS or _base(c) in {_base(k) for k in METRICS}]
    raise KeyError(f"metric {name!r} not found; available metric columns: {avail}")


# ----------------------------------------------------------------------------------------------------------
# Loading and per-pair aggregation
# ----------------------------------------------------------------------------------------------------------


def _read_tsvs(
    paths: str | Path | Iterable[str | Path], keys: Sequence[str], what: str, caller: str, rows: str
) -> list[pd.DataFrame]:
    """Read TSVs with ``keys`` as string columns; DataError naming the file when one is missing/empty/bad."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError(f"{caller}: no {what} files given")
    frames = []
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: {what} file not found")
        if p.stat().st_size == 0:
            raise DataError(f"{p}: {what} file is empty (0 bytes); re-run its evaluation step")
        try:
            df = pd.read_csv(p, sep="\t", dtype={k: str for k in keys})
        except pd.errors.EmptyDataError as exc:
            raise DataError(f"{p}: {what} file is empty; re-run its evaluation step") from exc
        except Exception as exc:
            raise DataError(f"{p}: cannot read as a TSV ({type(exc).__name__}: {exc})") from exc
        if df.empty:
            raise DataError(f"{p}: {what} file has a header but no rows (no {rows} evaluated?)")
        missing = [c for c in keys if c not in df.columns]
        if missing:
            raise DataError(f"{p}: missing required column(s) {missing}; has {list(df.columns)}")
        frames.append(df)
    return frames


def _fill_name(df: pd.DataFrame, name_col: str, id_col: str) -> pd.DataFrame:
    if name_col not in df.columns:
        df[name_col] = df[id_col]
    else:
        df[name_col] = df[name_col].where(df[name_col].notna(), df[id_col])
    return df


def load_metrics(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Read and concatenate metrics TSVs (one per dataset x method x fold).

    Args:
        paths: one path or an iterable of paths to tab-separated files with at least the columns
            ``dataset, method, fold, pair_id`` (normally also ``method_name, fixed, moving, label,
            label_name, dsc, hd95_mm|hd95_px, ..., ssim_clean, runtime_s, device``). Distance columns may be
            ``_mm`` in some files and ``_px`` in others; the union of columns is kept (missing -> NaN).

    Returns:
        The concatenated label-level DataFrame, rows in file order. ``method_name`` is filled from
        ``method`` where absent. ``pair_id``, ``fold``, ``dataset``, ``method`` are read as strings so pairs
        match across files.

    Raises:
        DataError: no paths given, or a file is missing, empty, has no data rows, or lacks a key column
            (the message names the file).
    """
    frames = _read_tsvs(paths, PAIR_KEYS, "metrics", "load_metrics", "test pairs")
    return _fill_name(pd.concat(frames, ignore_index=True, sort=False), "method_name", "method")


def load_aux_metrics(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Read and concatenate aux metrics TSVs: test results of the auxiliary networks of He et al. 2022.

    The auxiliary networks are the segmenter and the autoencoder trained with cross-entropy or contour
    losses (the paper's Tables 2 and 3); they are evaluated on test cases, not registered pairs.

    Args:
        paths: one path or an iterable of paths to tab-separated files with the columns ``dataset, aux,
            aux_name, kind, fold, case, dsc, hd_px, assd_px`` (one row per test case; ``kind`` is
            ``segmenter`` or ``autoencoder``). ``dataset, aux, fold, case`` are required; metric columns
            may be absent from some files (-> NaN).

    Returns:
        The concatenated case-level DataFrame, rows in file order; ``dataset, aux, fold, case`` as strings,
        ``aux_name`` filled from ``aux`` where absent.

    Raises:
        DataError: no paths given, or a file is missing, empty, has no data rows, or lacks a key column
            (the message names the file).
    """
    frames = _read_tsvs(paths, AUX_KEYS, "aux metrics", "load_aux_metrics", "test cases")
    return _fill_name(pd.concat(frames, ignore_index=True, sort=False), "aux_name", "aux")


def per_pair(df: pd.DataFrame) -> pd.DataFrame:
    """Collapse label rows to one row per registered pair.

    Args:
        df: label-level metrics (as from :func:`load_metrics`) with columns ``dataset, method, fold,
            pair_id`` and any of the metric columns.

    Returns:
        One row per ``(dataset, method, fold, pair_id)`` (first-appearance order) with

        * label-wise metrics (:data:`LABEL_METRICS` present in ``df``: ``dsc, hd95_*, hd_*, assd_*``)
          averaged over the pair's labels with ``nanmean`` (NaN only if every label is NaN);
        * every other column (pair-level metrics ``folding_*, sdlogj, cc, tre_*, ssim_clean, runtime_s``
          and text columns ``method_name, fixed, moving, device``) taken once: the first non-NaN value
          (NaN if the pair has none, e.g. ``ssim_clean`` of a method without attention);
        * ``n_labels``: the number of label rows of the pair.

        ``label`` and ``label_name`` are dropped. A pair-level numeric column that varies across the labels
        of a pair is logged as a warning (it should be repeated identically).

    Raises:
        DataError: a key column is missing.
    """
    missing = [c for c in PAIR_KEYS if c not in df.columns]
    if missing:
        raise DataError(f"per_pair: metrics table lacks key column(s) {missing}; has {list(df.columns)}")
    keys = list(PAIR_KEYS)
    label_cols = [c for c in LABEL_METRICS if c in df.columns]
    other = [c for c in df.columns if c not in keys and c not in label_cols and c not in LABEL_COLUMNS]
    work = df.copy()
    for c in label_cols:
        work[c] = pd.to_numeric(work[c], errors="coerce")
    g = work.groupby(keys, sort=False, dropna=False)
    parts = [g.size().rename("n_labels")]
    if label_cols:
        parts.append(g[label_cols].mean())
    if other:
        parts.append(g[other].first())
        num = [c for c in other if pd.api.types.is_numeric_dtype(work[c])]
        if num:
            varying = g[num].nunique(dropna=True).gt(1).sum()
            varying = varying[varying > 0]
            if len(varying):
                log.warning(
                    "per_pair: pair-level column(s) vary across labels of a pair (first value kept): %s",
                    ", ".join(f"{c} ({n} pairs)" for c, n in varying.items()),
                )
    out = pd.concat(parts, axis=1).reset_index()
    order = keys + [c for c in df.columns if c in out.columns and c not in keys] + ["n_labels"]
    out = out[order]
    out.attrs[LABEL_ROWS_ATTR] = _Carried(df)
    return out


class _Carried:
    """A frame kept in another frame's ``attrs`` by reference.

    pandas deep-copies ``attrs`` into the result of (almost) every operation and compares them on ``concat``;
    this holder copies as itself (no copy of the frame) and equals only itself, so both stay cheap.
    """

    __slots__ = ("frame",)

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def __deepcopy__(self, memo: dict) -> _Carried:
        return self

    def __copy__(self) -> _Carried:
        return self

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<label-level rows: {len(self.frame)}>"


def label_rows(pairs: pd.DataFrame | None) -> pd.DataFrame | None:
    """The label-level rows a per-pair table was made from (:func:`per_pair` keeps a reference to them in
    ``attrs``, which selections and copies of the per-pair table keep too), or ``None``.

    The rows are those :func:`per_pair` was called on, not filtered like a selection of the per-pair table;
    filter them by ``dataset`` / ``method`` again. Used by the per-label extra tables and figures
    (:mod:`regbench.report.extras`), which get only the per-pair table.
    """
    held = getattr(pairs, "attrs", {}).get(LABEL_ROWS_ATTR) if pairs is not None else None
    return held.frame if isinstance(held, _Carried) else None


# ----------------------------------------------------------------------------------------------------------
# Summary tables
# ----------------------------------------------------------------------------------------------------------


def _method_names(df: pd.DataFrame) -> dict[str, str]:
    names = df["method_name"] if "method_name" in df.columns else df["method"]
    first = pd.DataFrame({"m": df["method"].astype(str), "n": names.astype(str)}).drop_duplicates("m")
    return dict(zip(first["m"], first["n"]))


def _match_method(key: str, names: Mapping[str, str]) -> str | None:
    """Method id for an id or display name (``None`` if neither)."""
    if key in names:
        return key
    for mid, name in names.items():
        if name == key:
            return mid
    return None


def _ordered_methods(df: pd.DataFrame, method_order: Sequence[str] | None) -> list[str]:
    names = _method_names(df)
    present = list(names)
    if not method_order:
        return present
    out: list[str] = []
    for key in method_order:
        mid = _match_method(str(key), names)
        if mid is None:
            log.warning("method_order names %r, which has no rows; skipped", key)
        elif mid not in out:
            out.append(mid)
    rest = [m for m in present if m not in out]
    if rest:
        log.warning("methods %s are not in method_order; appended at the end", rest)
    return out + rest


def _display_index(methods: list[str], names: Mapping[str, str]) -> list[str]:
    labels = [names[m] for m in methods]
    dup = {n for n in labels if labels.count(n) > 1}
    return [f"{names[m]} ({m})" if names[m] in dup else names[m] for m in methods]


_PM = re.compile(r"^\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*(?:±|\+/-|\+-|\\pm)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*$")


def _parse_paper(value: Any) -> tuple[str | None, float, float]:
    """Paper value -> (verbatim string or None, mean, std); numbers parsed from ``"a ± b"`` when possible."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, math.nan, math.nan
    if isinstance(value, str):
        s = value.strip()
        if not s or s in {DASH, "-", "--"}:
            return None, math.nan, math.nan
        m = _PM.match(s)
        if m:
            return s, float(m.group(1)), float(m.group(2))
        try:
            return s, float(s), math.nan
        except ValueError:
            return s, math.nan, math.nan
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return None, float(value[0]), float(value[1])
    return None, float(value), math.nan


def _paper_lookup(paper_values: Mapping[str, Mapping[str, Any]], mid: str, name: str, metric: str, col: str) -> Any:
    entry = paper_values.get(mid, paper_values.get(name))
    if not entry:
        return None
    for key in (metric, col, _base(col)):
        if key in entry:
            return entry[key]
    return None


#: Paired tests of :func:`summary_table`: config name -> the name printed in the p column's header.
PAIRED_TESTS = {"wilcoxon": "Wilcoxon", "ttest": "paired t-test"}


def _paired_p(x: np.ndarray, y: np.ndarray, min_pairs: int, test: str = "wilcoxon") -> float:
    """Two-sided p of the paired ``test`` (:data:`PAIRED_TESTS`) of ``x`` vs ``y`` (1-D, same length).

    NaN for fewer than ``min_pairs`` pairs or when every difference is zero. Raises ValueError for an
    unknown ``test``."""
    from scipy.stats import ttest_rel, wilcoxon

    if test not in PAIRED_TESTS:
        raise ValueError(f"unknown paired test {test!r}; use one of {sorted(PAIRED_TESTS)}")
    if len(x) < min_pairs or not np.any(x - y != 0):
        return math.nan
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = wilcoxon(x, y) if test == "wilcoxon" else ttest_rel(x, y)
            return float(res.pvalue)
    except ValueError:
        return math.nan


def _wilcoxon_p(x: np.ndarray, y: np.ndarray, min_pairs: int) -> float:
    return _paired_p(x, y, min_pairs, "wilcoxon")


def _fmt_p(p: float) -> str:
    if p is None or pd.isna(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def summary_table(
    df_pairs: pd.DataFrame,
    metrics: Sequence[str],
    method_order: Sequence[str] | None = None,
    reference: str | None = None,
    paper_values: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    test_metric: str = "dsc",
    min_pairs: int = 5,
    paired_test: str = "wilcoxon",
    return_numeric: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Per-method summary: ``mean ± std`` over pairs for each metric, ``n_pairs`` and optional p-values.

    Args:
        df_pairs: per-pair table from :func:`per_pair` (columns ``dataset, method, fold, pair_id``,
            ``method_name`` and the metric columns). All rows are pooled per method (all folds; if several
            datasets are present they are pooled too, with a warning: filter to one dataset first).
        metrics: metric columns to show, in order (e.g. ``["dsc", "hd95", "folding_pct", "runtime_s"]``);
            unit-less or other-unit names resolve via :func:`resolve_metric`.
        method_order: row order, by method id or display name; unlisted methods are appended (warning).
        reference: method id or display name to test against; adds the column
            ``"p vs <name> (Wilcoxon, DSC)"``: two-sided Wilcoxon signed-rank p of each method vs the
            reference on per-pair ``test_metric`` (pairs matched on ``dataset, fold, pair_id``; NaN pairs
            dropped). ``—`` for the reference itself, for fewer than ``min_pairs`` matched pairs, or when all
            differences are zero; the display column is left out (the numeric columns stay) when no method
            has ``min_pairs`` matched pairs (one test pair; no ``test_metric`` values, e.g. images without
            labels).
        paper_values: ``{method id or name: {metric: value}}`` with a number or a verbatim string such as
            ``"0.79 ± 0.08"`` (metric keys as in ``metrics``, the resolved column, or unit-less). Every metric
            with at least one paper value gets two columns, ``"<metric> (paper)"`` then ``"<metric> (ours)"``;
            ``—`` where the paper has no value for a method.
        test_metric: metric column for the paired test (default ``dsc``).
        paired_test: ``wilcoxon`` (default) or ``ttest`` (two-sided paired t-test, ``scipy.stats.ttest_rel``);
            the p column then reads ``"p vs <name> (paired t-test, DSC)"`` and the CSV ``p_ttest_vs_<ref>``.
        min_pairs: smallest number of matched pairs for which a p-value is reported.
        return_numeric: also return the numeric frame (see below) as a second value.

    Returns:
        The display DataFrame: index ``Method`` (display names; ``"name (id)"`` if two ids share a name),
        string columns ``"<label> <arrow>"`` e.g. ``"DSC ↑"`` = ``"0.850 ± 0.071"`` (sample std, ``ddof=1``),
        ``n_pairs`` and the p-value column. The numeric frame is stored in ``display.attrs["numeric"]``
        (retrieve with :func:`numeric_table`; :func:`write_table` writes it as the CSV): index ``method``
        (id), columns ``method_name, n_pairs``, per metric ``<col>_mean, <col>_std, <col>_n`` (valid pairs)
        and ``<col>_paper_mean, <col>_paper_std`` when paper values exist, and with a reference
        ``p_wilcoxon_vs_<ref>, n_paired_vs_<ref>``. With ``return_numeric=True``: ``(display, numeric)``.

    Raises:
        DataError: ``df_pairs`` is empty or lacks the ``method`` column.
        KeyError: a metric column is missing.
        ValueError: ``reference`` is not a method of ``df_pairs``, or ``paired_test`` is unknown.
    """
    if paired_test not in PAIRED_TESTS:
        raise ValueError(f"unknown paired test {paired_test!r}; use one of {sorted(PAIRED_TESTS)}")
    if df_pairs is None or df_pairs.empty:
        raise DataError("summary_table: no per-pair rows")
    if "method" not in df_pairs.columns:
        raise DataError(f"summary_table: per-pair table lacks 'method'; has {list(df_pairs.columns)}")
    df = df_pairs.copy()
    df["method"] = df["method"].astype(str)
    if "dataset" in df.columns and df["dataset"].nunique() > 1:
        log.warning("summary_table: pooling pairs of several datasets %s", sorted(df["dataset"].unique()))
    cols = [resolve_metric(df, m) for m in metrics]
    names = _method_names(df)
    methods = _ordered_methods(df, method_order)
    index = _display_index(methods, names)

    numeric = pd.DataFrame(index=pd.Index(methods, name="method"))
    numeric["method_name"] = [names[m] for m in methods]
    numeric["n_pairs"] = [int((df["method"] == m).sum()) for m in methods]
    display = pd.DataFrame(index=pd.Index(index, name="Method"))

    for metric, col in zip(metrics, cols):
        info = metric_info(col)
        means, stds, ns = [], [], []
        for m in methods:
            v = pd.to_numeric(df.loc[df["method"] == m, col], errors="coerce").dropna().to_numpy(dtype=float)
            means.append(float(v.mean()) if len(v) else math.nan)
            stds.append(float(v.std(ddof=1)) if len(v) > 1 else math.nan)
            ns.append(len(v))
        ours = [info.fmt_mean_std(a, b) for a, b in zip(means, stds)]
        paper = None
        if paper_values:
            parsed = [_parse_paper(_paper_lookup(paper_values, m, names[m], metric, col)) for m in methods]
            if any(s is not None or not math.isnan(a) for s, a, _ in parsed):
                paper = [s if s is not None else info.fmt_mean_std(a, b) for s, a, b in parsed]
                numeric[f"{col}_paper_mean"] = [a for _, a, _ in parsed]
                numeric[f"{col}_paper_std"] = [b for _, _, b in parsed]
        if paper is not None:
            display[f"{info.header} (paper)"] = paper
            display[f"{info.header} (ours)"] = ours
        else:
            display[info.header] = ours
        numeric[f"{col}_mean"] = means
        numeric[f"{col}_std"] = stds
        numeric[f"{col}_n"] = ns
    display["n_pairs"] = numeric["n_pairs"].to_numpy()

    if reference is not None:
        ref = _match_method(str(reference), names)
        if ref is None:
            raise ValueError(f"reference method {reference!r} not found; methods: {list(names)} / {list(names.values())}")
        tcol = resolve_metric(df, test_metric)
        keys = [k for k in ("dataset", "fold", "pair_id") if k in df.columns]
        if "pair_id" not in keys:
            raise DataError("summary_table: a paired test needs the 'pair_id' column")
        vals = df[keys + ["method", tcol]].copy()
        vals[tcol] = pd.to_numeric(vals[tcol], errors="coerce")
        ref_v = vals[vals["method"] == ref].drop(columns="method").drop_duplicates(keys)
        ps, npaired = [], []
        for m in methods:
            if m == ref:
                ps.append(math.nan)
                npaired.append(int(ref_v[tcol].notna().sum()))
                continue
            other = vals[vals["method"] == m].drop(columns="method").drop_duplicates(keys)
            j = other.merge(ref_v, on=keys, suffixes=("_m", "_ref")).dropna(subset=[f"{tcol}_m", f"{tcol}_ref"])
            x, y = j[f"{tcol}_m"].to_numpy(float), j[f"{tcol}_ref"].to_numpy(float)
            npaired.append(len(j))
            if len(j) < min_pairs:
                log.warning("summary_table: %s vs %s: only %d matched pairs (< %d); no p-value", m, ref, len(j), min_pairs)
            ps.append(_paired_p(x, y, min_pairs, paired_test))
        label = metric_info(tcol).label
        pcol = f"p vs {names[ref]} ({PAIRED_TESTS[paired_test]}, {label})"
        if any(m != ref and n >= min_pairs for m, n in zip(methods, npaired)):
            display[pcol] = ["(ref.)" if m == ref else _fmt_p(p) for m, p in zip(methods, ps)]
        else:  # e.g. one test pair, or no DSC (no labels): a column of dashes would only look like a result
            log.info("summary_table: no method has %d pairs with %s matched to %s; p column left out", min_pairs,
                     tcol, ref)
        numeric[f"p_{paired_test}_vs_{ref}"] = ps
        numeric[f"n_paired_vs_{ref}"] = npaired

    display.attrs["numeric"] = numeric.to_dict(orient="tight")
    return (display, numeric) if return_numeric else display


def numeric_table(table: pd.DataFrame) -> pd.DataFrame:
    """The numeric companion of a table from :func:`summary_table` / :func:`per_label_table`.

    The companion lives in ``table.attrs["numeric"]`` as a ``DataFrame.to_dict(orient="tight")`` dict (kept
    as plain lists so pandas can compare/copy ``attrs`` safely); a ``DataFrame`` placed there by a caller is
    accepted too. Returns ``table`` itself when it has no numeric companion (written as is).
    """
    tight = table.attrs.get("numeric") if hasattr(table, "attrs") else None
    if tight is None:
        return table
    if isinstance(tight, pd.DataFrame):  # a caller may attach a DataFrame (e.g. several tables combined)
        return tight.copy()
    return pd.DataFrame.from_dict(tight, orient="tight")


def _label_column(work: pd.DataFrame) -> tuple[pd.Series, list[str], dict[str, Any]]:
    """Label display names of label-level rows: ``label_name`` (else the ``label`` id) as strings, the names
    in ascending label-id order (first appearance without ids) and ``{name: smallest label id}``."""
    lname = work["label_name"] if "label_name" in work.columns else work["label"]
    lname = lname.where(lname.notna(), work["label"] if "label" in work.columns else lname)
    lab = lname.astype(str)
    if "label" in work.columns:
        key = pd.to_numeric(work["label"], errors="coerce")
        ids = pd.DataFrame({"_lab": lab, "_k": key}).groupby("_lab", sort=False)["_k"].min()
        order = ids.sort_values(kind="stable").index.tolist()
        return lab, order, {k: (None if pd.isna(v) else (int(v) if float(v).is_integer() else float(v)))
                            for k, v in ids.items()}
    return lab, list(dict.fromkeys(lab)), {}


def per_label_table(
    df: pd.DataFrame,
    metric: str = "dsc",
    method_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Methods x labels table of ``mean ± std`` (``ddof=1``) of a label-wise metric over pairs (folds pooled).

    Args:
        df: label-level metrics (:func:`load_metrics`) with ``method``, ``label`` and/or ``label_name`` and
            the metric column.
        metric: label-wise metric (``dsc``, ``hd95``, ``assd_mm``, ...; resolved by :func:`resolve_metric`).
        method_order: row order, by id or display name (see :func:`summary_table`).

    Returns:
        Display DataFrame: index ``Method``, one column per label (``label_name``, ordered by ``label``),
        ``columns.name`` = the metric header (e.g. ``"DSC ↑"``). Numeric companion in ``attrs`` (see
        :func:`numeric_table`): index ``method``, columns ``method_name`` and ``<label>_mean, <label>_std,
        <label>_n`` per label.

    Raises:
        DataError: no rows, or neither ``label`` nor ``label_name`` present.
        KeyError: the metric column is missing.
    """
    if df is None or df.empty:
        raise DataError("per_label_table: no rows")
    if "label_name" not in df.columns and "label" not in df.columns:
        raise DataError(f"per_label_table: needs 'label' or 'label_name'; has {list(df.columns)}")
    col = resolve_metric(df, metric)
    info = metric_info(col)
    work = df.copy()
    work["method"] = work["method"].astype(str)
    work["_val"] = pd.to_numeric(work[col], errors="coerce")
    work["_lab"], order, _ = _label_column(work)
    names = _method_names(work)
    methods = _ordered_methods(work, method_order)
    display = pd.DataFrame(index=pd.Index(_display_index(methods, names), name="Method"))
    numeric = pd.DataFrame(index=pd.Index(methods, name="method"))
    numeric["method_name"] = [names[m] for m in methods]
    stats = work.groupby(["method", "_lab"])["_val"].agg(["mean", lambda s: s.std(ddof=1), "count"])
    stats.columns = ["mean", "std", "n"]
    for lab in order:
        means, stds, ns = [], [], []
        for m in methods:
            if (m, lab) in stats.index:
                r = stats.loc[(m, lab)]
                means.append(float(r["mean"]))
                stds.append(float(r["std"]) if r["n"] > 1 else math.nan)
                ns.append(int(r["n"]))
            else:
                means.append(math.nan)
                stds.append(math.nan)
                ns.append(0)
        display[lab] = [info.fmt_mean_std(a, b) for a, b in zip(means, stds)]
        numeric[f"{lab}_mean"], numeric[f"{lab}_std"], numeric[f"{lab}_n"] = means, stds, ns
    display.columns.name = info.header
    display.attrs["numeric"] = numeric.to_dict(orient="tight")
    return display


def combine_datasets(items: Sequence[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """Stack per-dataset display tables (e.g. from :func:`summary_table`) into one.

    Args:
        items: ``[(dataset, display table), ...]`` in the order to show.

    Returns:
        With one item, that table unchanged. Otherwise the tables stacked row-wise with a leading
        ``"Dataset"`` column, and the numeric companions stacked with a ``dataset`` column in
        ``attrs["numeric"]`` (see :func:`numeric_table`). Columns are the union in table order; a metric
        with paper values in one dataset only gets ``"<metric> (paper)"`` (``—``) / ``"<metric> (ours)"`` in
        every dataset, and any other cell a dataset lacks is NaN (written as ``—``).

    Raises:
        DataError: ``items`` is empty.
    """
    if not items:
        raise DataError("combine_datasets: no tables to combine")
    if len(items) == 1:
        return items[0][1]
    split = {str(c)[: -len(" (ours)")] for _, t in items for c in t.columns if str(c).endswith(" (ours)")}
    frames, order = [], ["Dataset"]
    for dataset, t in items:
        t = t.copy()
        for c in [c for c in t.columns if c in split]:  # paper values in another dataset only
            pos = list(t.columns).index(c)
            t = t.rename(columns={c: f"{c} (ours)"})
            t.insert(pos, f"{c} (paper)", DASH)
        t.insert(0, "Dataset", dataset)
        prev = None
        for c in t.columns:  # union of columns, each new one placed after its predecessor
            if c not in order:
                order.insert(order.index(prev) + 1 if prev is not None else len(order), c)
            prev = c
        frames.append(t)
    out = pd.concat(frames)[order]
    out.attrs["numeric"] = pd.concat([numeric_table(t).assign(dataset=d) for d, t in items])
    return out


def aux_summary_table(
    aux: pd.DataFrame,
    metrics: Sequence[str],
    aux_order: Sequence[str] | None = None,
    paper_values: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> pd.DataFrame:
    """Auxiliary-network table (He et al. 2022, Tables 2 and 3): one row per (dataset, auxiliary network).

    Args:
        aux: case-level table from :func:`load_aux_metrics` (``dataset, aux, aux_name, kind, fold, case``
            and metric columns such as ``dsc, hd_px, assd_px``).
        metrics: metric columns to show, in order (resolved by :func:`resolve_metric`: ``"hd"`` -> ``hd_px``).
        aux_order: row order within a dataset, by aux id or ``aux_name`` (others appended, with a warning).
            Datasets keep their first-appearance order.
        paper_values: ``{dataset: {aux id or aux_name: {metric: value}}}`` with a number or a verbatim
            string such as ``"0.957 ± 0.012"`` (the ``report.paper_values`` format). Every metric with at
            least one paper value gets two columns, ``"<metric> (paper)"`` then ``"<metric> (ours)"``; ``—``
            where the paper has no value for a row.

    Returns:
        Display DataFrame: index ``"Auxiliary network"`` (``aux_name``; ``"name (id)"`` if two ids share a
        name), first column ``Dataset``, then per metric ``"<label> <arrow>"`` = ``"mean ± std"`` over the
        test cases (sample std, ``ddof=1``; NaN cases skipped; mean alone for a single case) with the paper
        column beside it, then ``n_cases`` (rows of that dataset and network). Numeric companion in ``attrs``
        (:func:`numeric_table`): index ``aux`` (id), columns ``dataset, aux_name, kind, n_cases`` and per
        metric ``<col>_mean, <col>_std, <col>_n`` (+ ``<col>_paper_mean, <col>_paper_std``).

    Raises:
        DataError: ``aux`` is empty or lacks ``dataset``/``aux``.
        KeyError: a metric column is missing.
    """
    if aux is None or aux.empty:
        raise DataError("aux_summary_table: no aux metrics rows")
    missing = [c for c in ("dataset", "aux") if c not in aux.columns]
    if missing:
        raise DataError(f"aux_summary_table: aux metrics lack column(s) {missing}; has {list(aux.columns)}")
    df = aux.copy()
    df["aux"] = df["aux"].astype(str)
    df["dataset"] = df["dataset"].astype(str)
    if "aux_name" not in df.columns:
        df["aux_name"] = df["aux"]
    cols = [resolve_metric(df, m) for m in metrics]
    rows: list[tuple[str, str]] = []
    for dataset in dict.fromkeys(df["dataset"]):
        sub = df[df["dataset"] == dataset].assign(method=lambda x: x["aux"], method_name=lambda x: x["aux_name"])
        sub_names = _method_names(sub)
        here = [k for k in (aux_order or []) if _match_method(str(k), sub_names) is not None]
        rows += [(dataset, a) for a in _ordered_methods(sub, here or None)]
    names = _method_names(df.assign(method=df["aux"], method_name=df["aux_name"]))
    ids = list(dict.fromkeys(a for _, a in rows))
    disp_name = dict(zip(ids, _display_index(ids, names)))

    numeric = pd.DataFrame(index=pd.Index([a for _, a in rows], name="aux"))
    numeric["dataset"] = [d for d, _ in rows]
    numeric["aux_name"] = [names[a] for _, a in rows]
    kind = {}
    if "kind" in df.columns:
        first = df.drop_duplicates(["dataset", "aux"])
        kind = dict(zip(zip(first["dataset"], first["aux"]), first["kind"]))
    numeric["kind"] = [kind.get(r) for r in rows]
    sel = [(df["dataset"] == d) & (df["aux"] == a) for d, a in rows]
    numeric["n_cases"] = [int(m.sum()) for m in sel]
    display = pd.DataFrame(index=pd.Index([disp_name[a] for _, a in rows], name="Auxiliary network"))
    display["Dataset"] = [d for d, _ in rows]

    for metric, col in zip(metrics, cols):
        info = metric_info(col)
        means, stds, ns = [], [], []
        for m in sel:
            v = pd.to_numeric(df.loc[m, col], errors="coerce").dropna().to_numpy(dtype=float)
            means.append(float(v.mean()) if len(v) else math.nan)
            stds.append(float(v.std(ddof=1)) if len(v) > 1 else math.nan)
            ns.append(len(v))
        ours = [info.fmt_mean_std(a, b) for a, b in zip(means, stds)]
        parsed = [
            _parse_paper(_paper_lookup((paper_values or {}).get(d) or {}, a, names[a], metric, col)) for d, a in rows
        ]
        if any(s is not None or not math.isnan(a) for s, a, _ in parsed):
            display[f"{info.header} (paper)"] = [s if s is not None else info.fmt_mean_std(a, b) for s, a, b in parsed]
            display[f"{info.header} (ours)"] = ours
            numeric[f"{col}_paper_mean"] = [a for _, a, _ in parsed]
            numeric[f"{col}_paper_std"] = [b for _, _, b in parsed]
        else:
            display[info.header] = ours
        numeric[f"{col}_mean"], numeric[f"{col}_std"], numeric[f"{col}_n"] = means, stds, ns
    display["n_cases"] = numeric["n_cases"].to_numpy()
    display.attrs["numeric"] = numeric.to_dict(orient="tight")
    return display


# ----------------------------------------------------------------------------------------------------------
# Per-label and dataset-column tables (report.tables items with `columns: labels` / `columns: datasets`)
# ----------------------------------------------------------------------------------------------------------


def bold(text: str) -> str:
    """Mark a cell as the best of its column: ``**text**`` (Markdown bold; :func:`write_table` writes
    ``\\textbf{text}`` in the TeX file)."""
    return f"**{text}**"


def best_flags(values: Sequence[float], higher_is_better: bool | None) -> list[bool]:
    """``True`` where ``values`` holds the best finite value (ties all ``True``); all ``False`` for a metric
    without a direction or without finite values."""
    v = np.asarray([math.nan if x is None else float(x) for x in values], dtype=float)
    ok = np.isfinite(v)
    if higher_is_better is None or not ok.any():
        return [False] * len(v)
    best = v[ok].max() if higher_is_better else v[ok].min()
    return [bool(o and x == best) for o, x in zip(ok, v)]


def _shown(info: MetricInfo, x: float) -> float:
    """``x`` rounded as :meth:`MetricInfo.fmt` displays it (NaN stays NaN)."""
    s = info.fmt(x)
    return math.nan if s == DASH else float(s)


def _cells(info: MetricInfo, means: Sequence[float], stds: Sequence[float],
           bold_best: bool) -> tuple[list[str], list[bool]]:
    """``"mean ± std"`` cells and best flags (on the values as displayed), bold where best if ``bold_best``."""
    cells = [info.fmt_mean_std(a, b) for a, b in zip(means, stds)]
    flags = best_flags([_shown(info, a) for a in means], info.higher_is_better)
    if bold_best:
        cells = [bold(c) if f else c for c, f in zip(cells, flags)]
    return cells, flags


def _paper_cells(info: MetricInfo, values: Sequence[Any],
                 bold_best: bool) -> tuple[list[str], list[float], list[float], list[bool]]:
    """Paper cells (verbatim strings, ``—`` where none), parsed means / stds and best flags on the means
    (only where at least two rows have a paper value: one value alone is no comparison)."""
    parsed = [_parse_paper(v) for v in values]
    cells = [s if s is not None else info.fmt_mean_std(a, b) for s, a, b in parsed]
    means, stds = [a for _, a, _ in parsed], [b for _, _, b in parsed]
    flags = best_flags(means, info.higher_is_better)
    if sum(math.isfinite(a) for a in means) < 2:
        flags = [False] * len(means)
    if bold_best:
        cells = [bold(c) if f and c != DASH else c for c, f in zip(cells, flags)]
    return cells, means, stds, flags


def _has_paper(values: Sequence[Any]) -> bool:
    return any(s is not None or not math.isnan(a) for s, a, _ in (_parse_paper(v) for v in values))


def _label_entry(entry: Any, label: str, label_id: Any, where: str) -> Any:
    """The paper value of one label from ``{label_name or label id: value}``."""
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: paper values of a per-label table are {{label_name: value}} mappings; got "
                         f"{entry!r}")
    for key in (label, label_id, str(label_id)):
        if key is not None and key in entry:
            return entry[key]
    return None


def _pair_count(df: pd.DataFrame, method: str) -> int:
    keys = [k for k in ("dataset", "fold", "pair_id") if k in df.columns]
    return int(len(df.loc[df["method"] == method, keys].drop_duplicates())) if keys else 0


def label_metric_table(
    df: pd.DataFrame,
    metrics: Sequence[str],
    method_order: Sequence[str] | None = None,
    *,
    label_names: Sequence[str] | None = None,
    paper_values: Mapping[str, Mapping[str, Any]] | None = None,
    percent: Iterable[str] | None = None,
    layout: str = "rows",
    bold_best: bool = True,
) -> pd.DataFrame:
    """Methods x labels table of several label-wise metrics (Zhu et al. 2021, Tables I-II): one cell per
    (method, label, metric), ``mean ± std`` over test pairs (folds pooled) of that label's value.

    Args:
        df: label-level metrics (:func:`load_metrics`) of one dataset, with ``method``, ``label`` and/or
            ``label_name``, ``fold``, ``pair_id`` and the metric columns.
        metrics: label-wise metrics, one block each (resolved by :func:`resolve_metric`: ``"hd"`` ->
            ``hd_mm``).
        method_order: rows, by method id or display name (others appended, with a warning).
        label_names: the labels to show, in order, by ``label_name`` or label id (default: every label, in
            label-id order).
        paper_values: ``{method id or name: {metric: {label_name or label id: value}}}``, values as in
            :func:`summary_table` (``"63.7 ± 7.3"`` kept verbatim). Where a block has a paper value, each
            label gets ``"<label> (paper)"`` then ``"<label> (ours)"``; ``—`` where the paper has none.
        percent: metrics (names or columns) shown x 100 with :func:`percent_info` (e.g. ``["dsc"]`` for DSC in
            %); paper values are shown as given, so give them in the same unit.
        layout: ``"rows"``: the metric blocks stacked (a ``Metric`` column, one row per metric and method,
            columns = labels; the paper's layout); ``"columns"``: one row per method, column groups
            ``"<metric header>: <label>"``.
        bold_best: mark the best value of each column (per block) in bold (:func:`bold`; ties all bold; ours
            compared as displayed, the paper's on their parsed means).

    Returns:
        Display DataFrame, index ``Method``, last column ``n_pairs`` (pairs of the method). Numeric companion
        (:func:`numeric_table`) in long form: index ``method``, columns ``method_name, metric, label,
        label_name, scale, mean, std, n, paper_mean, paper_std, best, paper_best`` (one row per method,
        metric and label; ``scale`` = 100 for a metric in percent, ``mean``/``std`` after scaling).

    Raises:
        DataError: no rows, or neither ``label`` nor ``label_name``.
        KeyError: a metric column is missing, or a ``label_names`` entry is not a label of ``df``.
        ValueError: a bad ``layout``, or paper values of a metric that are not ``{label: value}``.
    """
    if df is None or df.empty:
        raise DataError("label_metric_table: no rows")
    if "label_name" not in df.columns and "label" not in df.columns:
        raise DataError(f"label_metric_table: needs 'label' or 'label_name'; has {list(df.columns)}")
    if layout not in ("rows", "columns"):
        raise ValueError(f"label_metric_table: layout {layout!r}; expected 'rows' or 'columns'")
    work = df.copy()
    work["method"] = work["method"].astype(str)
    work["_lab"], order, label_ids = _label_column(work)
    if label_names:
        by_id = {str(v): k for k, v in label_ids.items()}
        chosen = []
        for key in label_names:
            lab = str(key) if str(key) in order else by_id.get(str(key))
            if lab is None:
                raise KeyError(f"label {key!r} not found; labels: {order}")
            chosen.append(lab)
        order = chosen
    names = _method_names(work)
    methods = _ordered_methods(work, method_order)
    index = _display_index(methods, names)
    n_pairs = [_pair_count(work, m) for m in methods]
    paper_values = paper_values or {}

    blocks = []  # (info, col, {label: ours cells}, {label: paper cells or None})
    numeric_rows: list[dict[str, Any]] = []
    for metric in metrics:
        col = resolve_metric(work, metric)
        pct = in_percent(percent, metric, col)
        info = percent_info(metric_info(col)) if pct else metric_info(col)
        scale = 100.0 if pct else 1.0
        vals = pd.to_numeric(work[col], errors="coerce") * scale
        g = pd.DataFrame({"m": work["method"], "l": work["_lab"], "v": vals}).groupby(["m", "l"])["v"]
        stats = pd.concat([g.mean().rename("mean"), g.std(ddof=1).rename("std"), g.count().rename("n")], axis=1)
        entries = [_paper_lookup(paper_values, m, names[m], metric, col) for m in methods]
        ours_cells, paper_cells = {}, {}
        for lab in order:
            means = [float(stats.loc[(m, lab), "mean"]) if (m, lab) in stats.index else math.nan for m in methods]
            stds = [float(stats.loc[(m, lab), "std"]) if (m, lab) in stats.index else math.nan for m in methods]
            ns = [int(stats.loc[(m, lab), "n"]) if (m, lab) in stats.index else 0 for m in methods]
            ours_cells[lab], flags = _cells(info, means, stds, bold_best)
            pv = [_label_entry(e, lab, label_ids.get(lab), f"paper_values[{m!r}][{metric!r}]")
                  for m, e in zip(methods, entries)]
            if _has_paper(pv):
                paper_cells[lab], p_means, p_stds, p_flags = _paper_cells(info, pv, bold_best)
            else:
                paper_cells[lab] = None
                p_means, p_stds, p_flags = [math.nan] * len(methods), [math.nan] * len(methods), [False] * len(methods)
            for i, m in enumerate(methods):
                numeric_rows.append({
                    "method": m, "method_name": names[m], "metric": col, "label": label_ids.get(lab),
                    "label_name": lab, "scale": scale, "mean": means[i], "std": stds[i], "n": ns[i],
                    "paper_mean": p_means[i], "paper_std": p_stds[i], "best": flags[i], "paper_best": p_flags[i],
                })
        blocks.append((info, ours_cells, paper_cells))

    if layout == "rows":
        any_paper = any(p is not None for _, _, pc in blocks for p in pc.values())
        frames = []
        for info, ours_cells, paper_cells in blocks:
            t = pd.DataFrame(index=pd.Index(index, name="Method"))
            t["Metric"] = info.header
            for lab in order:
                if any_paper:
                    t[f"{lab} (paper)"] = paper_cells[lab] if paper_cells[lab] is not None else DASH
                    t[f"{lab} (ours)"] = ours_cells[lab]
                else:
                    t[lab] = ours_cells[lab]
            t["n_pairs"] = n_pairs
            frames.append(t)
        display = pd.concat(frames)
    else:
        display = pd.DataFrame(index=pd.Index(index, name="Method"))
        for info, ours_cells, paper_cells in blocks:
            has = any(p is not None for p in paper_cells.values())
            for lab in order:
                head = f"{info.header}: {lab}"
                if has:
                    display[f"{head} (paper)"] = paper_cells[lab] if paper_cells[lab] is not None else DASH
                    display[f"{head} (ours)"] = ours_cells[lab]
                else:
                    display[head] = ours_cells[lab]
        display["n_pairs"] = n_pairs
    numeric = pd.DataFrame(numeric_rows).set_index("method")
    display.attrs["numeric"] = numeric.to_dict(orient="tight")
    return display


def _resolve_present(df: pd.DataFrame, metric: str) -> str:
    """:func:`resolve_metric`, preferring a column that has values (``_mm`` vs ``_px`` per dataset)."""
    try:
        return resolve_metric(df.dropna(axis=1, how="all"), metric)
    except KeyError:
        return resolve_metric(df, metric)


def dataset_columns_table(
    df_pairs: pd.DataFrame,
    metrics: Sequence[str],
    method_order: Sequence[str] | None = None,
    *,
    datasets: Sequence[str] | None = None,
    paper_values: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    percent: Iterable[str] | None = None,
    bold_best: bool = True,
) -> pd.DataFrame:
    """Methods x datasets table (Zhu et al. 2021, Table III: run time per pair on each dataset).

    Args:
        df_pairs: per-pair table (:func:`per_pair`) with ``dataset``, ``method`` and the metric columns.
        metrics: metrics, one column group each (datasets inside), resolved per dataset (``_mm`` / ``_px``).
        method_order: rows, by method id or display name (others appended, with a warning).
        datasets: the dataset columns, in order (default: first appearance in ``df_pairs``).
        paper_values: ``{dataset: {method id or name: {metric: value}}}`` (the ``report.paper_values``
            format); where a (metric, dataset) has a paper value, it gets ``"<dataset>: <metric> (paper)"``
            then ``"... (ours)"``, ``—`` where the paper has none.
        percent: metrics shown x 100 (:func:`percent_info`).
        bold_best: mark the best value of each column in bold (as in :func:`label_metric_table`).

    Returns:
        Display DataFrame: index ``Method``, per metric and dataset ``"<dataset>: <label> <arrow>"`` =
        ``"mean ± std"`` over that dataset's pairs (sample std; ``—`` where a method has no value there),
        then ``"<dataset>: n_pairs"`` per dataset. Numeric companion in long form: index ``method``, columns
        ``method_name, dataset, metric, scale, mean, std, n, paper_mean, paper_std, best, paper_best,
        n_pairs``.

    Raises:
        DataError: no rows, or a listed dataset has none.
        KeyError: a metric column is missing in a dataset.
    """
    if df_pairs is None or df_pairs.empty:
        raise DataError("dataset_columns_table: no per-pair rows")
    df = df_pairs.copy()
    df["method"], df["dataset"] = df["method"].astype(str), df["dataset"].astype(str)
    present = list(dict.fromkeys(df["dataset"]))
    datasets = [str(d) for d in datasets] if datasets else present
    missing = [d for d in datasets if d not in present]
    if missing:
        raise DataError(f"dataset_columns_table: dataset(s) {missing} have no rows; datasets: {present}")
    names = _method_names(df)
    methods = _ordered_methods(df, method_order)
    display = pd.DataFrame(index=pd.Index(_display_index(methods, names), name="Method"))
    paper_values = paper_values or {}
    numeric_rows: list[dict[str, Any]] = []
    for metric in metrics:
        for d in datasets:
            sub = df[df["dataset"] == d]
            try:
                col = _resolve_present(sub, metric)
            except KeyError as exc:
                raise KeyError(f"dataset {d!r}: {exc.args[0]}") from exc
            pct = in_percent(percent, metric, col)
            info = percent_info(metric_info(col)) if pct else metric_info(col)
            scale = 100.0 if pct else 1.0
            means, stds, ns = [], [], []
            for m in methods:
                v = pd.to_numeric(sub.loc[sub["method"] == m, col], errors="coerce").dropna().to_numpy(float) * scale
                means.append(float(v.mean()) if len(v) else math.nan)
                stds.append(float(v.std(ddof=1)) if len(v) > 1 else math.nan)
                ns.append(len(v))
            ours, flags = _cells(info, means, stds, bold_best)
            pv = [_paper_lookup(paper_values.get(d) or {}, m, names[m], metric, col) for m in methods]
            head = f"{d}: {info.header}"
            if _has_paper(pv):
                display[f"{head} (paper)"], p_means, p_stds, p_flags = _paper_cells(info, pv, bold_best)
                display[f"{head} (ours)"] = ours
            else:
                display[head] = ours
                p_means = p_stds = [math.nan] * len(methods)
                p_flags = [False] * len(methods)
            for i, m in enumerate(methods):
                numeric_rows.append({
                    "method": m, "method_name": names[m], "dataset": d, "metric": col, "scale": scale,
                    "mean": means[i], "std": stds[i], "n": ns[i], "paper_mean": p_means[i], "paper_std": p_stds[i],
                    "best": flags[i], "paper_best": p_flags[i], "n_pairs": _pair_count(sub, m),
                })
    for d in datasets:
        sub = df[df["dataset"] == d]
        display[f"{d}: n_pairs"] = [_pair_count(sub, m) for m in methods]
    display.attrs["numeric"] = pd.DataFrame(numeric_rows).set_index("method").to_dict(orient="tight")
    return display


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------

_LATEX_MAP = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "—": "---",
    "→": r"$\rightarrow$",
}


def latex_escape(text: Any) -> str:
    """Escape TeX special characters and map the symbols used in headers (± ↑ ↓ ≤ —) to LaTeX."""
    return "".join(_LATEX_MAP.get(ch, ch) for ch in str(text))


_BOLD = re.compile(r"\*\*(.+)\*\*", re.S)


def _tex_cell(text: str) -> str:
    """A TeX table cell: escaped, ``**x**`` (:func:`bold`) as ``\\textbf{x}``."""
    m = _BOLD.fullmatch(text)
    return rf"\textbf{{{latex_escape(m.group(1))}}}" if m else latex_escape(text)


def _to_latex(table: pd.DataFrame) -> str:
    show_index = not (isinstance(table.index, pd.RangeIndex) and table.index.name is None)
    cols = [str(c) for c in table.columns]
    head: list[str] = []
    if show_index:
        head.append(" / ".join(str(n) for n in table.index.names if n is not None) or "")
    head += cols
    spec = ("l" if show_index else "") + "c" * len(cols)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(latex_escape(h) for h in head) + r" \\", r"\midrule"]
    for idx, row in zip(table.index, table.itertuples(index=False)):
        cells = []
        if show_index:
            cells.append(", ".join(map(str, idx)) if isinstance(idx, tuple) else str(idx))
        cells += [DASH if (not isinstance(v, str) and pd.isna(v)) else str(v) for v in row]
        lines.append(" & ".join(_tex_cell(c) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _md_escape(v: Any) -> Any:
    if isinstance(v, str):
        return v.replace("|", "\\|")
    return DASH if v is None or (np.isscalar(v) and pd.isna(v)) else v


def _to_markdown(table: pd.DataFrame) -> str:
    """``DataFrame.to_markdown`` with ``|`` escaped in cells/headers (``|J|≤0``) and numbers kept as formatted."""
    t = table.copy()
    t.columns = [_md_escape(str(c)) for c in t.columns]
    t.index = pd.Index([_md_escape(str(i)) for i in t.index], name=_md_escape(t.index.name))
    t = t.astype(object).map(_md_escape)
    return t.to_markdown(disable_numparse=True)


def write_table(
    table: pd.DataFrame,
    out_stem: str | Path,
    title: str,
    provenance: Mapping[str, Any] | None,
    notes: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write a table as ``<out_stem>.md``, ``<out_stem>.csv`` and ``<out_stem>.tex`` (each atomically).

    Args:
        table: display table (from :func:`summary_table` / :func:`per_label_table`, or any DataFrame).
        out_stem: output path without suffix (``results/tables/oasis_summary``); the suffix is appended, so
            dots in the stem are kept. Parent folders are created.
        title: table title (Markdown heading, CSV/TeX comment).
        provenance: record from :func:`regbench.provenance.collect` (``None`` writes "unavailable").
        notes: free-text lines shown under the table, e.g. ``"scaled-down run: 20 epochs instead of 1500"``
            (see :func:`regbench.provenance.scale_note`).

    Files:
        * ``.md``: ``# title``, the table (``DataFrame.to_markdown``, numbers kept as formatted), the notes
          as a bullet list, then :func:`regbench.provenance.provenance_markdown`.
        * ``.csv``: leading ``# `` comment lines (``# title: …``, ``# note: …``, ``# commit: …``,
          ``# config: …`` …) then the numeric companion (:func:`numeric_table`: separate ``_mean`` / ``_std``
          columns) with its index. Read back with ``pd.read_csv(path, comment="#", index_col=0)``.
        * ``.tex``: ``%`` comments (title, notes, provenance), then a booktabs ``tabular`` fragment
          (needs ``\\usepackage{booktabs}``) for ``\\input``; symbols mapped to math mode.

    Returns:
        ``{"md": Path, "csv": Path, "tex": Path}``.
    """
    stem = Path(out_stem)
    notes = [str(n) for n in (notes or []) if n]
    paths = {ext: stem.parent / f"{stem.name}.{ext}" for ext in ("md", "csv", "tex")}

    md = [f"# {title}", "", _to_markdown(table), ""]
    if notes:
        md += [f"- {n}" for n in notes] + [""]
    md.append(provenance_markdown(provenance))
    atomic_write_text(paths["md"], "\n".join(md))

    head = [f"# title: {' '.join(title.split())}"] + [f"# note: {' '.join(n.split())}" for n in notes]
    head += provenance_lines(provenance, prefix="# ")
    atomic_write_text(paths["csv"], "\n".join(head) + "\n" + numeric_table(table).to_csv(lineterminator="\n"))

    tex = [f"% {' '.join(title.split())}"] + [f"% note: {' '.join(n.split())}" for n in notes]
    tex.append("% requires \\usepackage{booktabs}")
    atomic_write_text(paths["tex"], "\n".join(tex) + "\n" + provenance_latex(provenance) + _to_latex(table))
    log.info("wrote %s.{md,csv,tex}", stem)
    return paths
