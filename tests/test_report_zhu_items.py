"""Tests of the per-label tables, dataset-column tables, per-label figures, per-dataset box plots and
difference-map panels of ``report.tables`` / ``report.figures`` (regbench.report.extras; the items Zhu et al.
2021 needs: Tables I-III, Figs. 4-14), on small synthetic metrics with several labels and methods whose
expected values are computed here independently of the report code."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pandas as pd
import pytest

from regbench import provenance as prov_mod
from regbench.config import validate_experiment
from regbench.errors import ConfigError
from regbench.io import save_image
from regbench.report import extras, tables
from regbench.report.experiment import _notes, render_experiment

N_PAIRS = 6
REGIONS = ["frontal", "parietal", "occipital", "temporal", "cingulate"]
ROIS = [f"ROI {i}" for i in range(1, 13)]
#: method id -> (display name, DSC level)
METHODS = {
    "before": ("Before", 0.20),
    "ants_affine": ("ANTs affine", 0.33),
    "zhu_affine": ("Our affine alignment", 0.36),
    "syn": ("SyN", 0.50),
    "vm": ("VM", 0.55),
    "zhu": ("Ours", 0.62),
}
#: runtime (s) per pair, per method and dataset
RUNTIME = {"before": 0.0, "ants_affine": 8.0, "zhu_affine": 0.3, "syn": 35.0, "vm": 0.7, "zhu": 1.8}


def _dsc(dataset: str, method: str, label_idx: int, pair: int, rng: np.random.Generator) -> float:
    base = METHODS[method][1] + 0.01 * label_idx + rng.normal(0, 0.02)
    if dataset == "mb" and method == "syn" and REGIONS[label_idx] == "temporal":
        base += 0.30  # SyN is best on the temporal region (above Ours)
    if dataset == "lp" and method == "zhu" and label_idx >= 8:
        base -= 0.10  # Ours is below VM on ROIs 9-12, best on ROIs 1-8
    return base


def _label_rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for dataset, labels in (("mb", REGIONS), ("lp", ROIS)):
        for mid, (name, _) in METHODS.items():
            for p in range(N_PAIRS):
                rt = RUNTIME[mid] * (1.0 if dataset == "mb" else 0.8) + 0.01 * p
                for li, lab in enumerate(labels):
                    dsc = _dsc(dataset, mid, li, p, rng)
                    rows.append({
                        "dataset": dataset, "method": mid, "method_name": name, "fold": "0", "pair_id": f"p{p}",
                        "fixed": f"f{p}", "moving": f"m{p}", "label": li + 1, "label_name": lab, "dsc": dsc,
                        "hd_mm": 20.0 * (1.0 - dsc), "hd95_mm": 15.0 * (1.0 - dsc), "assd_mm": 3.0 * (1.0 - dsc),
                        "runtime_s": rt, "device": "cpu",
                    })
    return pd.DataFrame(rows)


def _expected(df: pd.DataFrame, dataset: str, method: str, label: str, col: str,
              scale: float = 1.0) -> tuple[float, float]:
    """Mean and sample std over pairs of one label's values, computed directly from the rows."""
    v = df[(df.dataset == dataset) & (df.method == method) & (df.label_name == label)][col].to_numpy(float) * scale
    return float(v.mean()), float(v.std(ddof=1))


TABLE1 = {
    "name": "table1_affine", "title": "Affine alignment per region (Zhu et al. 2021, Table I)",
    "columns": "labels", "dataset": "mb", "methods": ["before", "ants_affine", "zhu_affine"],
    "metrics": ["dsc", "hd", "assd"], "percent": ["dsc"],
    "paper_values": {"mb": {
        "before": {"dsc": {"frontal": "16.3 ± 8.1", "parietal": "20.9 ± 6.3"}, "hd": {"frontal": "18.3 ± 4.9"}},
        "ants_affine": {"dsc": {"frontal": "33.3 ± 4.3"}},
        "zhu_affine": {"dsc": {"frontal": "33.5 ± 4.0", "parietal": "31.4 ± 3.9"}, "hd": {"frontal": "14.3 ± 4.1"}},
    }},
}
TABLE2 = {
    "name": "table2_regions", "title": "All methods per region (Zhu et al. 2021, Table II)",
    "columns": "labels", "dataset": "mb", "methods": list(METHODS), "metrics": ["dsc", "hd"], "percent": ["dsc"],
}
TABLE3 = {
    "name": "table3_runtime", "title": "Run time per pair (Zhu et al. 2021, Table III)", "columns": "datasets",
    "methods": ["ants_affine", "syn", "vm", "zhu_affine", "zhu"], "metrics": ["runtime_s"],
    "paper_values": {"mb": {"ants_affine": {"runtime_s": "8.19 ± 0.30"}, "zhu": {"runtime_s": "1.78 ± 0.01"}},
                     "lp": {"zhu": {"runtime_s": "1.18 ± 0.01"}}},
}
FIG5 = {"name": "fig5_dsc_rois", "title": "DSC per ROI (Zhu et al. 2021, Fig. 5)", "kind": "per_label",
        "dataset": "lp", "metric": "dsc", "methods": ["syn", "vm", "zhu"], "mark_best": "zhu", "percent": ["dsc"],
        "labels_per_row": 6}
FIG6 = {"name": "fig6_hd_rois", "title": "HD per ROI (Zhu et al. 2021, Fig. 6)", "kind": "per_label",
        "dataset": "lp", "metric": "hd", "methods": ["syn", "vm", "zhu"], "mark_best": "zhu", "style": "box"}
FIG4 = {"name": "fig4_box_mb", "title": "Mean over regions per pair (Zhu et al. 2021, Fig. 4)", "kind": "box",
        "datasets": ["mb"], "metrics": ["dsc", "hd", "assd"], "methods": ["syn", "vm", "zhu"], "percent": ["dsc"]}


def _exp(tabs=(), figs=()) -> dict:
    ds = {"preprocess": "demo", "modality": "t1", "folds": [0], "labels": {1: "a"}}
    return validate_experiment({
        "experiment": "zhu_items_test", "protocol": "synthetic test data", "seed": 0,
        "scale": {"max_train_steps": 10, "note": "tiny synthetic test"},
        "datasets": {"mb": copy.deepcopy(ds), "lp": copy.deepcopy(ds)},
        "methods": {m: {"name": n, "kind": "classical", "transform": "identity"} for m, (n, _) in METHODS.items()},
        "report": {"title": "Synthetic Zhu items", "metrics": ["dsc", "hd"],
                   "tables": [copy.deepcopy(t) for t in tabs], "figures": [copy.deepcopy(f) for f in figs]},
    }, "test.yaml")


@pytest.fixture(scope="module")
def labels_df():
    return _label_rows()


@pytest.fixture(scope="module")
def pairs(labels_df):
    return tables.per_pair(labels_df)


def _md_rows(md: str) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the Markdown table of a written .md file."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]] for ln in lines]
    return split[0], split[2:]


def _cell(header, body, method: str, column: str, metric: str | None = None) -> str:
    j = header.index(column)
    hits = [r for r in body if r[0] == method and (metric is None or r[1] == metric)]
    assert len(hits) == 1, (method, metric, hits)
    return hits[0][j]


# ----------------------------------------------------------------------------------------------------------
# Per-label tables (columns: labels)
# ----------------------------------------------------------------------------------------------------------


def test_per_pair_keeps_label_rows(labels_df, pairs):
    assert tables.label_rows(pairs) is labels_df
    sub = pairs[pairs.dataset == "mb"].copy()
    assert tables.label_rows(sub) is labels_df  # selections and copies keep the reference, without a copy
    assert tables.label_rows(pd.concat([sub, pairs])) is labels_df  # same source: kept
    other = tables.per_pair(labels_df.head(10))
    assert tables.label_rows(pd.concat([pairs, other])) is None  # different sources: dropped, no error
    assert tables.label_rows(pairs.drop(columns="n_labels")) is labels_df


def test_label_table_values_best_percent_paper(tmp_path, labels_df, pairs):
    exp = _exp([TABLE1])
    prov = prov_mod.collect(exp, ["cpu"])
    paths = extras.render_extras(exp, pairs, None, tmp_path, prov, _notes(exp))
    assert sorted(p.name for p in paths) == [f"table1_affine.{e}" for e in ("csv", "md", "tex")]
    md = (tmp_path / "table1_affine.md").read_text()
    header, body = _md_rows(md)
    assert header[:4] == ["Method", "Metric", "frontal (paper)", "frontal (ours)"]
    assert header[-1] == "n_pairs" and [h for h in header if h.endswith("(ours)")] == [f"{r} (ours)" for r in REGIONS]
    assert [r[0] for r in body] == ["Before", "ANTs affine", "Our affine alignment"] * 3  # blocks in method order
    assert [r[1] for r in body[::3]] == ["DSC (%) ↑", "HD (mm) ↓", "ASSD (mm) ↓"]
    for mid in TABLE1["methods"]:
        name = METHODS[mid][0]
        for lab in REGIONS:
            m, s = _expected(labels_df, "mb", mid, lab, "dsc", 100.0)
            assert _cell(header, body, name, f"{lab} (ours)", "DSC (%) ↑").strip("*") == f"{m:.1f} ± {s:.1f}"
            m, s = _expected(labels_df, "mb", mid, lab, "hd_mm")
            assert _cell(header, body, name, f"{lab} (ours)", "HD (mm) ↓").strip("*") == f"{m:.2f} ± {s:.2f}"
            m, s = _expected(labels_df, "mb", mid, lab, "assd_mm")
            assert _cell(header, body, name, f"{lab} (ours)", "ASSD (mm) ↓").strip("*") == f"{m:.2f} ± {s:.2f}"
    # best (bold) of every column: our affine alignment (highest DSC, lowest distances), nothing else
    for metric in ("DSC (%) ↑", "HD (mm) ↓", "ASSD (mm) ↓"):
        for lab in REGIONS:
            cells = {r[0]: r[header.index(f"{lab} (ours)")] for r in body if r[1] == metric}
            assert [n for n, c in cells.items() if c.startswith("**") and c.endswith("**")] == ["Our affine alignment"]
    # paper values beside ours, verbatim; blank (—) where the paper has none; paper best bold where comparable
    assert _cell(header, body, "Before", "frontal (paper)", "DSC (%) ↑") == "16.3 ± 8.1"
    assert _cell(header, body, "ANTs affine", "frontal (paper)", "DSC (%) ↑") == "33.3 ± 4.3"
    assert _cell(header, body, "Our affine alignment", "frontal (paper)", "DSC (%) ↑") == "**33.5 ± 4.0**"
    assert _cell(header, body, "ANTs affine", "parietal (paper)", "DSC (%) ↑") == "—"
    assert _cell(header, body, "Our affine alignment", "occipital (paper)", "DSC (%) ↑") == "—"
    assert _cell(header, body, "Our affine alignment", "frontal (paper)", "HD (mm) ↓") == "**14.3 ± 4.1**"
    assert _cell(header, body, "Before", "frontal (paper)", "ASSD (mm) ↓") == "—"  # no ASSD paper values
    assert {r[-1] for r in body} == {str(N_PAIRS)}
    # notes: per-label statistics instead of the per-pair note, percent and bold explained, scaled-down run
    assert tables.LABEL_STATS_NOTE in md and tables.PAIR_STATS_NOTE not in md
    assert "DSC in % (our values x 100" in md and "Bold: the best value of each column" in md
    for ext in ("md", "csv", "tex"):
        text = (tmp_path / f"table1_affine.{ext}").read_text()
        assert "SCALED-DOWN" in text and prov["config_hash"] in text
    tex = (tmp_path / "table1_affine.tex").read_text()
    m, s = _expected(labels_df, "mb", "zhu_affine", "frontal", "dsc", 100.0)
    assert rf"\textbf{{{m:.1f} $\pm$ {s:.1f}}}" in tex and "**" not in tex
    csv = pd.read_csv(tmp_path / "table1_affine.csv", comment="#", index_col=0)
    row = csv[(csv.metric == "dsc") & (csv.label_name == "temporal")].loc["zhu_affine"]
    assert row["mean"] == pytest.approx(_expected(labels_df, "mb", "zhu_affine", "temporal", "dsc", 100.0)[0])
    assert row["scale"] == 100 and bool(row["best"]) and row["n"] == N_PAIRS and math.isnan(row["paper_mean"])
    assert csv[(csv.metric == "dsc") & (csv.label_name == "frontal")].loc["before", "paper_mean"] == pytest.approx(16.3)
    assert int(csv["best"].sum()) == 3 * len(REGIONS)


def test_label_table_best_moves_with_data_and_layout_columns(tmp_path, labels_df, pairs):
    t = {**TABLE2, "layout": "columns", "label_names": ["temporal", "frontal"], "bold_best": True}
    table = extras.label_table(t, pairs, "report.tables[0]")
    assert list(table.columns) == ["DSC (%) ↑: temporal", "DSC (%) ↑: frontal", "HD (mm) ↓: temporal",
                                   "HD (mm) ↓: frontal", "n_pairs"]
    bolded = {c: [i for i, v in table[c].items() if str(v).startswith("**")] for c in table.columns[:-1]}
    assert bolded == {"DSC (%) ↑: temporal": ["SyN"], "DSC (%) ↑: frontal": ["Ours"],
                      "HD (mm) ↓: temporal": ["SyN"], "HD (mm) ↓: frontal": ["Ours"]}
    m, s = _expected(labels_df, "mb", "syn", "temporal", "dsc", 100.0)
    assert table.loc["SyN", "DSC (%) ↑: temporal"] == f"**{m:.1f} ± {s:.1f}**"
    plain = extras.label_table({**TABLE2, "percent": [], "bold_best": False}, pairs)
    m, s = _expected(labels_df, "mb", "vm", "occipital", "dsc")
    assert plain.loc[plain.Metric == "DSC ↑"].loc["VM", "occipital"] == f"{m:.3f} ± {s:.3f}"  # fraction, 3 decimals
    assert not plain.map(lambda v: str(v).startswith("**")).any().any()


# ----------------------------------------------------------------------------------------------------------
# Dataset-column table (columns: datasets)
# ----------------------------------------------------------------------------------------------------------


def test_dataset_table_runtime(tmp_path, labels_df, pairs):
    exp = _exp([TABLE3])
    prov = prov_mod.collect(exp, ["cpu"])
    extras.render_extras(exp, pairs, None, tmp_path, prov, _notes(exp))
    md = (tmp_path / "table3_runtime.md").read_text()
    header, body = _md_rows(md)
    assert header == ["Method", "mb: Runtime (s) ↓ (paper)", "mb: Runtime (s) ↓ (ours)", "lp: Runtime (s) ↓ (paper)",
                      "lp: Runtime (s) ↓ (ours)", "mb: n_pairs", "lp: n_pairs"]
    assert [r[0] for r in body] == ["ANTs affine", "SyN", "VM", "Our affine alignment", "Ours"]
    for mid in TABLE3["methods"]:
        for d in ("mb", "lp"):
            sub = labels_df[(labels_df.dataset == d) & (labels_df.method == mid)].drop_duplicates("pair_id")
            v = sub["runtime_s"].to_numpy(float)
            cell = _cell(header, body, METHODS[mid][0], f"{d}: Runtime (s) ↓ (ours)")
            assert cell.strip("*") == f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"
            assert cell.startswith("**") == (mid == "zhu_affine")  # fastest
    assert _cell(header, body, "ANTs affine", "mb: Runtime (s) ↓ (paper)") == "8.19 ± 0.30"
    assert _cell(header, body, "Ours", "mb: Runtime (s) ↓ (paper)") == "**1.78 ± 0.01**"
    assert _cell(header, body, "Ours", "lp: Runtime (s) ↓ (paper)") == "1.18 ± 0.01"  # alone: no comparison
    assert _cell(header, body, "SyN", "lp: Runtime (s) ↓ (paper)") == "—"
    assert tables.PAIR_STATS_NOTE in md and "SCALED-DOWN" in md
    csv = pd.read_csv(tmp_path / "table3_runtime.csv", comment="#", index_col=0)
    assert set(csv.columns) >= {"dataset", "metric", "mean", "std", "n", "paper_mean", "best", "n_pairs"}
    assert csv[csv.dataset == "lp"].loc["zhu", "paper_mean"] == pytest.approx(1.18)


def test_dataset_table_method_missing_in_one_dataset(pairs):
    sub = pairs[~((pairs.dataset == "lp") & (pairs.method == "syn"))]
    table = extras.dataset_table({**TABLE3, "paper_values": {}}, sub)
    assert table.loc["SyN", "lp: Runtime (s) ↓"] == "—" and table.loc["SyN", "lp: n_pairs"] == 0


# ----------------------------------------------------------------------------------------------------------
# Per-label figures (kind: per_label) and per-dataset box plots
# ----------------------------------------------------------------------------------------------------------


def test_per_label_figure_best_count(tmp_path, labels_df, pairs):
    stats = extras.label_means(FIG5, pairs)
    assert stats["labels"] == ROIS and stats["dataset"] == "lp"
    exp_best = [lab for lab in ROIS if int(lab.split()[1]) <= 8]
    assert list(stats["best"][stats["best"]].index) == exp_best and stats["n_best"] == 8 and stats["n_labels"] == 12
    m, _ = _expected(labels_df, "lp", "vm", "ROI 3", "dsc", 100.0)
    assert stats["mean"].loc["ROI 3", "vm"] == pytest.approx(m)
    hd = extras.label_means(FIG6, pairs)  # lower is better: same labels
    assert hd["n_best"] == 8 and list(hd["best"][hd["best"]].index) == exp_best

    fig = extras.per_label_figure(FIG5, pairs, footer="SCALED-DOWN RUN: test")
    assert "Ours best of the 3 methods on 8 of 12 labels" in fig._suptitle.get_text()
    axes = [ax for ax in fig.axes if ax.get_xticklabels()]
    assert len(axes) == 2 and [t.get_text() for t in axes[0].get_xticklabels()] == ROIS[:6]
    stars = [t for ax in axes for t in ax.texts if t.get_text() == "*"]
    assert len(stars) == 8
    assert any("SCALED-DOWN" in t.get_text() for t in fig.texts)

    exp = _exp(figs=[FIG5, FIG6, FIG4])
    paths = extras.render_extras(exp, pairs, None, tmp_path, prov_mod.collect(exp, ["cpu"]), _notes(exp))
    expected = sorted(f"{f['name']}.{e}" for f in (FIG5, FIG6, FIG4) for e in ("png", "pdf"))
    assert sorted(p.name for p in paths) == expected
    assert all(p.stat().st_size > 1000 for p in paths)


def test_box_figure_one_dataset_in_percent(pairs, labels_df):
    fig = extras.box_figure(FIG4, pairs, footer=None)
    axes = [ax for ax in fig.axes if ax.get_ylabel()]
    assert [ax.get_ylabel() for ax in axes] == ["DSC (%) ↑", "HD (mm) ↓", "ASSD (mm) ↓"]
    assert [ax.get_title() for ax in axes][:1] == ["mb"]  # one column: the listed dataset only
    zhu = labels_df[(labels_df.dataset == "mb") & (labels_df.method == "zhu")].groupby("pair_id")["dsc"].mean()
    lo, hi = axes[0].get_ylim()
    assert lo < 100 * zhu.min() and 100 * zhu.max() < hi and hi > 2.0  # values in percent


# ----------------------------------------------------------------------------------------------------------
# Config errors name the item
# ----------------------------------------------------------------------------------------------------------


def test_config_errors_name_the_item(tmp_path, pairs):
    no_vm_mb = tables.per_pair(tables.label_rows(pairs).query("not (dataset == 'mb' and method == 'vm')"))
    exp = _exp([TABLE2])
    with pytest.raises(ConfigError, match=r"report\.tables\[0\] \('table2_regions'\).*\['vm'\].*'mb'"):
        extras.render_extras(exp, no_vm_mb, None, tmp_path, None, [])
    exp = _exp([{**TABLE1, "label_names": ["frontal", "insula"]}])
    with pytest.raises(ConfigError, match=r"'table1_affine'.*\['insula'\].*frontal"):
        extras.render_extras(exp, pairs, None, tmp_path, None, [])
    exp = _exp(figs=[{**FIG5, "label_names": ["ROI 1", "ROI 99"]}])
    with pytest.raises(ConfigError, match=r"'fig5_dsc_rois'.*ROI 99"):
        extras.check_inputs(exp, pairs, None)
    exp = _exp(figs=[{**FIG5, "methods": ["syn", "vm", "zhu", "zhu_affine"], "dataset": "lp"}])
    no_aff_lp = tables.per_pair(tables.label_rows(pairs).query("not (dataset == 'lp' and method == 'zhu_affine')"))
    with pytest.raises(ConfigError, match=r"'fig5_dsc_rois'.*\['zhu_affine'\].*'lp'"):
        extras.render_extras(exp, no_aff_lp, None, tmp_path, None, [])
    fig = {k: v for k, v in FIG5.items() if k != "dataset"}
    with pytest.raises(ConfigError, match=r"'fig5_dsc_rois'.*2 datasets.*`dataset`"):
        extras.check_inputs(_exp(figs=[fig]), pairs, None)
    lp_only = tables.label_rows(pairs).query("dataset == 'lp'")
    assert extras.label_means(fig, pairs[pairs.dataset == "lp"], labels=lp_only)["dataset"] == "lp"
    with pytest.raises(ConfigError, match=r"'fig5_dsc_rois'.*mark_best 'before'"):
        extras.check_extras(_exp(figs=[{**FIG5, "mark_best": "before"}]))
    with pytest.raises(ConfigError, match=r"'table2_regions'.*metric 'tre'"):
        extras.check_inputs(_exp([{**TABLE2, "metrics": ["dsc", "tre"]}]), pairs, None)

    raw = _exp([TABLE1], [FIG4])
    for key, item, bad, pattern in [
        ("tables", 0, {"columns": "pairs"}, r"'table1_affine'.*columns 'pairs'"),
        ("tables", 0, {"reference": "zhu_affine"}, r"'table1_affine'.*\['reference'\] do not apply"),
        ("tables", 0, {"dataset": "oasis"}, r"'table1_affine'.*dataset \['oasis'\]"),
        ("figures", 0, {"mark_best": "zhu"}, r"'fig4_box_mb'.*\['mark_best'\] do not apply to a box figure"),
        ("figures", 0, {"datasets": ["mb", "ixi"]}, r"'fig4_box_mb'.*\['ixi'\]"),
    ]:
        bad_exp = copy.deepcopy(raw)
        bad_exp["report"][key][item].update(bad)
        with pytest.raises(ConfigError, match=pattern):
            extras.check_extras(bad_exp)
    with pytest.raises(ConfigError):  # the schema knows the new keys and values too
        _exp([{**TABLE1, "layout": "diagonal"}])
    with pytest.raises(ConfigError):
        _exp(figs=[{**FIG5, "metrics": ["dsc"]}])


# ----------------------------------------------------------------------------------------------------------
# Difference maps (kind: difference)
# ----------------------------------------------------------------------------------------------------------


def _write_reg(root, methods, shape=(12, 10, 8)):
    """cases.tsv with 2 T1 images and one registered pair per method (warped = fixed + method offset)."""
    rng = np.random.default_rng(3)
    prep = root / "prep" / "mb"
    prep.mkdir(parents=True)
    aff = np.eye(4)
    imgs = {c: rng.uniform(0, 1, shape).astype(np.float32) for c in ("c0", "c1")}
    for c, a in imgs.items():
        save_image(prep / f"{c}_t1.nii.gz", a, aff)
    (prep / "cases.tsv").write_text("case\tsplit\tt1\n" + "".join(f"{c}\ttest\t{c}_t1.nii.gz\n" for c in imgs))
    warped = {}
    for k, m in enumerate(methods):
        d = root / "reg" / "mb" / m / "fold0"
        d.mkdir(parents=True)
        warped[m] = imgs["c0"] + 0.1 * (k + 1)
        save_image(d / "p0_warped.nii.gz", warped[m], aff)
        (d / "pairs.tsv").write_text("pair_id\tfixed\tmoving\twarped\tddf\np0\tc0\tc1\t"
                                     f"{d / 'p0_warped.nii.gz'}\t\n")
    return imgs, warped


def test_difference_figure_and_kept_when_work_absent(tmp_path, pairs):
    methods = ["syn", "vm", "zhu"]
    imgs, warped = _write_reg(tmp_path, methods)
    spec = {"name": "fig9_diff", "title": "Difference maps (Zhu et al. 2021, Fig. 9)", "kind": "difference",
            "dataset": "mb", "methods": methods, "pairs": ["p0"]}
    exp = _exp(figs=[spec])
    fig = extras.difference_figure(spec, exp, tmp_path / "reg", tmp_path / "prep", footer="SCALED-DOWN RUN: x")
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 2 * (2 + len(methods))
    top, bot = axes[:5], axes[5:]
    assert [ax.get_title() for ax in top] == ["fixed c0", "moving c1", "SyN", "VM", "Ours"]
    k = imgs["c0"].shape[2] // 2
    f2 = imgs["c0"][:, :, k].astype(np.float64)
    np.testing.assert_allclose(bot[1].images[0].get_array(), np.abs(f2 - imgs["c1"][:, :, k]).T, atol=1e-6)
    for j, m in enumerate(methods):  # |fixed - warped| = 0.1 (j + 1) everywhere
        np.testing.assert_allclose(bot[2 + j].images[0].get_array(), np.full(f2.T.shape, 0.1 * (j + 1)), atol=1e-5)
        np.testing.assert_allclose(top[2 + j].images[0].get_array(), warped[m][:, :, k].T, atol=1e-6)
    assert any("SCALED-DOWN" in t.get_text() for t in fig.texts)

    out = tmp_path / "results"
    paths = extras.render_extras(exp, pairs, None, out, None, _notes(exp), reg_root=tmp_path / "reg",
                                 prep_root=tmp_path / "prep")
    assert sorted(p.name for p in paths) == ["fig9_diff.pdf", "fig9_diff.png"]
    committed = (out / "fig9_diff.png").read_bytes()
    assert extras.render_extras(exp, pairs, None, out, None, [], reg_root=tmp_path / "absent",
                                prep_root=tmp_path / "prep") == []
    assert (out / "fig9_diff.png").read_bytes() == committed  # work/ absent: the committed figure is kept
    assert extras.extra_outputs(exp) == ["fig9_diff.png", "fig9_diff.pdf"]


# ----------------------------------------------------------------------------------------------------------
# End to end: metrics TSVs -> render_experiment
# ----------------------------------------------------------------------------------------------------------


def test_render_experiment_writes_the_new_items(tmp_path, labels_df):
    paths = []
    for (d, m), sub in labels_df.groupby(["dataset", "method"], sort=False):
        p = tmp_path / "metrics" / d / m / "fold0.tsv"
        p.parent.mkdir(parents=True, exist_ok=True)
        sub.to_csv(p, sep="\t", index=False)
        paths.append(p)
    exp = _exp([TABLE1, TABLE3], [FIG5])
    out = tmp_path / "out"
    written = render_experiment(exp, paths, out, reg_root=tmp_path / "none", prep_root=tmp_path / "none")
    names = {p.name for p in written}
    assert {"table1_affine.md", "table3_runtime.md", "fig5_dsc_rois.png"} <= names
    header, body = _md_rows((out / "table1_affine.md").read_text())
    m, s = _expected(labels_df, "mb", "ants_affine", "cingulate", "dsc", 100.0)
    assert _cell(header, body, "ANTs affine", "cingulate (ours)", "DSC (%) ↑") == f"{m:.1f} ± {s:.1f}"


# ----------------------------------------------------------------------------------------------------------
# Named qualitative panels (kind: qualitative; Ding et al. 2021, Fig. 2)
# ----------------------------------------------------------------------------------------------------------


def test_qualitative_figure_named_panel_and_kept_when_work_absent(tmp_path, pairs, monkeypatch):
    from regbench.report import figures

    methods = ["syn", "zhu"]
    imgs, warped = _write_reg(tmp_path, methods)
    seen = {}
    original = figures.qualitative_panel

    def spy(fixed, moving, fixed_seg, moving_seg, results, out_stem, **kw):
        seen.update(fixed=fixed, moving=moving, results=results, out_stem=out_stem, title=kw.get("title"))
        return original(fixed, moving, fixed_seg, moving_seg, results, out_stem, **kw)

    monkeypatch.setattr(figures, "qualitative_panel", spy)
    spec = {"name": "fig2_qualitative", "title": "Fig. 2", "kind": "qualitative", "dataset": "mb",
            "methods": methods, "pair": "p0", "fold": 0}
    exp = _exp(figs=[spec])
    out = tmp_path / "results"
    paths = extras.render_extras(exp, pairs, None, out, None, _notes(exp), reg_root=tmp_path / "reg",
                                 prep_root=tmp_path / "prep")
    assert sorted(p.name for p in paths) == ["fig2_qualitative.pdf", "fig2_qualitative.png"]
    assert list(seen["results"]) == ["SyN", "Ours"]  # display names, config order
    np.testing.assert_allclose(seen["fixed"], imgs["c0"], atol=1e-6)
    np.testing.assert_allclose(seen["moving"], imgs["c1"], atol=1e-6)
    np.testing.assert_allclose(seen["results"]["Ours"]["warped"], warped["zhu"], atol=1e-6)
    assert seen["title"].startswith("Fig. 2 (mb, fold 0)")
    committed = (out / "fig2_qualitative.png").read_bytes()
    assert extras.render_extras(exp, pairs, None, out, None, [], reg_root=tmp_path / "absent",
                                prep_root=tmp_path / "prep") == []
    assert (out / "fig2_qualitative.png").read_bytes() == committed
    assert extras.extra_outputs(exp) == ["fig2_qualitative.png", "fig2_qualitative.pdf"]
    with pytest.raises(ConfigError, match="pairs"):  # a qualitative panel shows one pair: 'pair', not 'pairs'
        extras.check_extras(_exp(figs=[{**spec, "pairs": ["p0"]}]))
    with pytest.raises(ConfigError, match="fold"):
        extras.check_extras(_exp(figs=[{**spec, "fold": 3}]))
