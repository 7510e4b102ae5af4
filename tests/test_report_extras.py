"""Tests of the ablation tables and figures (regbench.report.extras; He et al. 2022 Tables 2-4, Figs. 8-9)
on small synthetic metrics where one method / auxiliary network is clearly better than the other."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest

from regbench import cli
from regbench import provenance as prov_mod
from regbench.config import validate_experiment
from regbench.errors import ConfigError, DataError
from regbench.report import extras, tables
from regbench.report.experiment import _notes

N_PAIRS = 12
N_CASES = 8
DATASETS = ("jsrt", "mont")
#: method id -> (display name, DSC offset over the base, mean SSIM of the attention-cleaned image or None)
METHODS = {
    "he2022": ("He et al. 2022", 0.10, 0.90),
    "he2022_noatt": ("He et al. 2022 w/o attention", 0.0, None),
    "he2022_nossim": ("He et al. 2022 w/o SSIM loss", 0.05, 0.80),
}
#: aux id -> (name, kind, mean DSC)
AUX = {
    "seg_ce": ("Segmenter (CE)", "segmenter", 0.93),
    "seg_contour": ("Segmenter (CE + contour)", "segmenter", 0.95),
    "ae_ce": ("Auto-encoder (CE)", "autoencoder", 0.90),
    "ae_contour": ("Auto-encoder (CE + contour)", "autoencoder", 0.96),
}


def _label_rows() -> pd.DataFrame:
    """Label-level metrics: 2 labels per pair; ``ssim_clean`` repeated on each label row, NaN without attention."""
    rng = np.random.default_rng(0)
    rows = []
    for d in DATASETS:
        base = rng.uniform(0.70, 0.80, N_PAIRS)
        for mid, (name, offset, ssim) in METHODS.items():
            for i in range(N_PAIRS):
                s = math.nan if ssim is None else ssim + rng.normal(0, 0.02)
                for lab in (1, 2):
                    dsc = base[i] + offset + rng.normal(0, 0.01)
                    rows.append({
                        "dataset": d, "method": mid, "method_name": name, "fold": "0", "pair_id": f"p{i}", "label": lab,
                        "label_name": f"L{lab}", "dsc": dsc, "hd_px": 20 * (1 - dsc) + lab, "assd_px": 5 * (1 - dsc),
                        "ssim_clean": s, "runtime_s": 0.01, "device": "cpu",
                    })
    return pd.DataFrame(rows)


def _aux_rows() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for d in DATASETS:
        for aid, (name, kind, mean) in AUX.items():
            for c in range(N_CASES):
                dsc = mean + rng.normal(0, 0.01)
                rows.append({"dataset": d, "aux": aid, "aux_name": name, "kind": kind, "fold": str(c % 2),
                             "case": f"c{c}", "dsc": dsc, "hd_px": 30 * (1 - dsc), "assd_px": 4 * (1 - dsc)})
    return pd.DataFrame(rows)


def _expected_pair_means(df: pd.DataFrame, dataset: str, method: str, col: str) -> tuple[float, float]:
    """Mean and sample std over pairs of the per-pair (label-averaged) values, computed independently."""
    sub = df[(df.dataset == dataset) & (df.method == method)]
    per_pair = np.array([sub[sub.pair_id == f"p{i}"][col].to_numpy(float).mean() for i in range(N_PAIRS)])
    return float(per_pair.mean()), float(per_pair.std(ddof=1))


REPORT = {
    "title": "Synthetic ablations",
    "metrics": ["dsc", "hd_px"],
    "reference": "he2022",
    "tables": [
        {"name": "table2_segmenter", "title": "Segmenter: CE vs contour loss (He et al. 2022, Table 2)",
         "auxiliary": ["seg_ce", "seg_contour"], "metrics": ["dsc"],
         "paper_values": {"jsrt": {"seg_contour": {"dsc": "0.961"}, "seg_ce": {"dsc": "0.957 ± 0.012"}}}},
        {"name": "table3_autoencoder", "title": "Auto-encoder (He et al. 2022, Table 3)",
         "auxiliary": ["ae_ce", "ae_contour"], "metrics": ["dsc", "hd_px", "assd_px"]},
        {"name": "table4_attention", "title": "With / without attention (He et al. 2022, Table 4)",
         "methods": ["he2022_noatt", "he2022"], "reference": "he2022", "metrics": ["dsc", "hd_px"],
         "paper_values": {"jsrt": {"he2022": {"dsc": "0.961"}, "he2022_noatt": {"dsc": "0.957 ± 0.012"}}}},
    ],
    "figures": [
        {"name": "fig8_ssim", "title": "SSIM with / without the SSIM loss (He et al. 2022, Fig. 8)",
         "kind": "bar", "methods": ["he2022_nossim", "he2022"], "labels": ["w/o SSIM loss", "with SSIM loss"],
         "metric": "ssim_clean"},
        {"name": "fig9_scales", "title": "Fused scales (He et al. 2022, Fig. 9)", "kind": "box",
         "methods": ["he2022_noatt", "he2022_nossim", "he2022"], "labels": [1, 2, 3],
         "xlabel": "number of fused scales", "metrics": ["dsc", "hd_px"]},
    ],
}


def _exp() -> dict:
    ds = {"preprocess": "demo", "modality": "image", "folds": [0], "labels": {"1": "L1", "2": "L2"}, "unit": "px"}
    methods = {m: {"name": n, "kind": "classical", "transform": "identity"} for m, (n, _, _) in METHODS.items()}
    return {
        "experiment": "extras_test", "protocol": "synthetic test data", "seed": 0,
        "scale": {"max_train_steps": 10, "note": "tiny synthetic test"},
        "datasets": {d: copy.deepcopy(ds) for d in DATASETS}, "methods": methods,
        "report": copy.deepcopy(REPORT),
    }


@pytest.fixture(scope="module")
def labels_df():
    return _label_rows()


@pytest.fixture(scope="module")
def pairs(labels_df):
    return tables.per_pair(labels_df)


@pytest.fixture
def exp():
    return validate_experiment(_exp(), "test.yaml")


@pytest.fixture
def prov(exp):
    return prov_mod.collect(exp, ["cpu"])


# ----------------------------------------------------------------------------------------------------------
# ssim_clean and per-pair tables
# ----------------------------------------------------------------------------------------------------------


def test_ssim_clean_kept_per_pair_and_summarised(labels_df, pairs):
    assert tables.metric_info("ssim_clean").label == "SSIM (attention-cleaned)"
    row = pairs[(pairs.dataset == "jsrt") & (pairs.method == "he2022") & (pairs.pair_id == "p3")].iloc[0]
    src = labels_df[(labels_df.dataset == "jsrt") & (labels_df.method == "he2022") & (labels_df.pair_id == "p3")]
    assert row["ssim_clean"] == pytest.approx(src["ssim_clean"].iloc[0])  # taken once, not averaged away
    assert pairs.loc[pairs.method == "he2022_noatt", "ssim_clean"].isna().all()
    disp, num = tables.summary_table(pairs[pairs.dataset == "jsrt"], ["dsc", "ssim_clean"], return_numeric=True)
    assert disp.loc["He et al. 2022 w/o attention", "SSIM (attention-cleaned) ↑"] == "—"
    assert num.loc["he2022_noatt", "ssim_clean_n"] == 0
    mean, std = _expected_pair_means(labels_df, "jsrt", "he2022", "ssim_clean")
    assert num.loc["he2022", "ssim_clean_mean"] == pytest.approx(mean)
    assert disp.loc["He et al. 2022", "SSIM (attention-cleaned) ↑"] == f"{mean:.3f} ± {std:.3f}"


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------


def test_method_table_matches_data_and_paper(tmp_path, exp, labels_df, pairs, prov):
    exp["report"]["figures"] = []
    exp["report"]["tables"] = [t for t in exp["report"]["tables"] if "methods" in t]
    exp["report"]["notes"] = ["Run-specific remark,\n  folded in the YAML."]
    notes = _notes(exp)
    assert notes[-1] == "Run-specific remark, folded in the YAML."
    paths = extras.render_extras(exp, pairs, None, tmp_path, prov, notes)
    assert sorted(p.name for p in paths) == ["table4_attention.csv", "table4_attention.md", "table4_attention.tex"]
    md = (tmp_path / "table4_attention.md").read_text()
    assert "# With / without attention (He et al. 2022, Table 4)" in md
    assert "DSC ↑ (paper)" in md and "DSC ↑ (ours)" in md and "0.961" in md and "0.957 ± 0.012" in md
    for d in DATASETS:
        for m in ("he2022", "he2022_noatt"):
            mean, std = _expected_pair_means(labels_df, d, m, "dsc")
            assert f"{mean:.3f} ± {std:.3f}" in md
    assert "w/o SSIM loss" not in md  # restricted to the listed methods
    assert "- Run-specific remark, folded in the YAML." in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| He et al. 2022")]
    assert len(lines) == 4 and "w/o attention" in lines[0] and "w/o attention" not in lines[1]  # listed order
    assert "(ref.)" in md and "<0.001" in md  # 12/12 pairs better: exact two-sided p = 2 / 2**12
    header = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert header[:5] == ["Method", "Dataset", "DSC ↑ (paper)", "DSC ↑ (ours)", "HD (px) ↓"]  # mont has no
    assert "DSC ↑" not in header  # paper value, yet shares the (paper)/(ours) columns of jsrt
    for ext in ("md", "csv", "tex"):
        text = (tmp_path / f"table4_attention.{ext}").read_text()
        assert "SCALED-DOWN" in text and prov["config_hash"] in text
    csv = pd.read_csv(tmp_path / "table4_attention.csv", comment="#", index_col=0)
    jsrt = csv[csv.dataset == "jsrt"]
    assert jsrt.loc["he2022", "dsc_mean"] == pytest.approx(_expected_pair_means(labels_df, "jsrt", "he2022", "dsc")[0])
    assert jsrt.loc["he2022", "dsc_paper_mean"] == pytest.approx(0.961)
    assert jsrt.loc["he2022_noatt", "p_wilcoxon_vs_he2022"] < 0.001
    assert jsrt.loc["he2022_noatt", "dsc_mean"] < jsrt.loc["he2022", "dsc_mean"] - 0.05


def test_aux_tables(tmp_path, exp, pairs, prov):
    aux_df = _aux_rows()
    paths = []
    for d in DATASETS:
        paths.append(tmp_path / f"aux_{d}.tsv")
        aux_df[aux_df.dataset == d].to_csv(paths[-1], sep="\t", index=False)
    aux = tables.load_aux_metrics(paths)
    assert len(aux) == len(aux_df) and aux["fold"].map(type).eq(str).all()
    exp["report"]["figures"] = []
    exp["report"]["tables"] = [t for t in exp["report"]["tables"] if "auxiliary" in t]
    out = tmp_path / "out"
    extras.render_extras(exp, pairs, aux, out, prov, _notes(exp))
    md2 = (out / "table2_segmenter.md").read_text()
    assert "DSC ↑ (paper)" in md2 and "0.961" in md2 and "0.957 ± 0.012" in md2 and "n_cases" in md2
    assert "Auto-encoder" not in md2
    for d in DATASETS:
        for aid in ("seg_ce", "seg_contour"):
            v = aux_df[(aux_df.dataset == d) & (aux_df.aux == aid)]["dsc"].to_numpy(float)
            assert f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" in md2
    assert "SCALED-DOWN" in md2 and tables.AUX_STATS_NOTE in md2 and tables.PAIR_STATS_NOTE not in md2
    md3 = (out / "table3_autoencoder.md").read_text()
    assert "(paper)" not in md3 and "HD (px) ↓" in md3 and "ASSD (px) ↓" in md3
    csv = pd.read_csv(out / "table3_autoencoder.csv", comment="#", index_col=0)
    mont = csv[csv.dataset == "mont"]
    assert set(mont.n_cases) == {N_CASES}
    assert mont.loc["ae_contour", "dsc_mean"] > mont.loc["ae_ce", "dsc_mean"] + 0.03
    v = aux_df[(aux_df.dataset == "mont") & (aux_df.aux == "ae_ce")]["hd_px"]
    assert mont.loc["ae_ce", "hd_px_mean"] == pytest.approx(v.mean())
    assert mont.loc["ae_ce", "hd_px_std"] == pytest.approx(v.std(ddof=1))


def test_load_aux_metrics_errors(tmp_path):
    with pytest.raises(DataError, match="nothere.tsv"):
        tables.load_aux_metrics([tmp_path / "nothere.tsv"])
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DataError, match="empty.tsv"):
        tables.load_aux_metrics(tmp_path / "empty.tsv")
    (tmp_path / "nocase.tsv").write_text("dataset\taux\tfold\tdsc\njsrt\tseg_ce\t0\t0.9\n")
    with pytest.raises(DataError, match=r"nocase.tsv.*'case'"):
        tables.load_aux_metrics([tmp_path / "nocase.tsv"])


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------


def test_figures(tmp_path, monkeypatch, exp, labels_df, pairs, prov):
    from regbench.report import figures

    drawn = {}
    save = figures.save_figure

    def spy(fig, stem):
        drawn[stem.name] = fig
        return save(fig, stem)

    monkeypatch.setattr(figures, "save_figure", spy)
    exp["report"]["tables"] = []
    paths = extras.render_extras(exp, pairs, None, tmp_path, prov, _notes(exp))
    assert sorted(p.name for p in paths) == ["fig8_ssim.pdf", "fig8_ssim.png", "fig9_scales.pdf", "fig9_scales.png"]
    for p in paths:
        assert p.stat().st_size > 1000
    assert (tmp_path / "fig9_scales.png").read_bytes()[:4] == b"\x89PNG"

    for fig in drawn.values():  # the scale note is printed into every figure
        assert any("SCALED-DOWN" in t.get_text() for t in fig.texts)

    # Fig. 8: one bar per (method, dataset) in listed order, height = mean over pairs.
    ax = drawn["fig8_ssim"].axes[0]
    heights = [r.get_height() for r in ax.patches]
    expected = [_expected_pair_means(labels_df, d, m, "ssim_clean")[0] for m in ("he2022_nossim", "he2022")
                for d in DATASETS]
    assert heights == pytest.approx(expected)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["w/o SSIM loss", "with SSIM loss"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(DATASETS)
    assert ax.get_ylabel() == "SSIM (attention-cleaned) ↑"

    # Fig. 9: rows = metrics, columns = datasets; the mean of each box is marked by an asterisk.
    axes = drawn["fig9_scales"].axes
    assert len(axes) == 4
    top_left = axes[0]
    assert top_left.get_title() == "jsrt" and top_left.get_ylabel() == "DSC ↑"
    assert [t.get_text() for t in axes[2].get_xticklabels()] == ["1", "2", "3"]
    assert axes[2].get_xlabel() == "number of fused scales" and axes[2].get_ylabel() == "HD (px) ↓"
    stars = [ln for ln in top_left.lines if ln.get_marker() == "*"]
    star_y = sorted(float(np.ravel(ln.get_ydata())[0]) for ln in stars)
    want = sorted(_expected_pair_means(labels_df, "jsrt", m, "dsc")[0] for m in METHODS)
    assert star_y == pytest.approx(want)


# ----------------------------------------------------------------------------------------------------------
# Errors, outputs, schema, CLI
# ----------------------------------------------------------------------------------------------------------


def test_missing_method_raises_config_error(tmp_path, exp, pairs, prov):
    exp["methods"]["ghost"] = {"name": "Ghost", "kind": "classical", "transform": "identity"}
    bad = copy.deepcopy(exp)
    bad["report"]["tables"][2]["methods"] = ["he2022_noatt", "ghost", "he2022"]
    with pytest.raises(ConfigError, match=r"table4_attention.*'ghost'.*no rows in the metrics"):
        extras.render_extras(bad, pairs, _aux_rows(), tmp_path, prov, [])
    bad = copy.deepcopy(exp)
    bad["report"]["figures"][1]["methods"] = ["ghost", "he2022"]
    bad["report"]["figures"][1]["labels"] = ["a", "b"]
    with pytest.raises(ConfigError, match=r"fig9_scales.*'ghost'"):
        extras.render_extras(bad, pairs, _aux_rows(), tmp_path, prov, [])
    undeclared = copy.deepcopy(exp)
    undeclared["report"]["figures"][0]["methods"] = ["he2022", "he2O22"]
    with pytest.raises(ConfigError, match=r"fig8_ssim.*unknown method id.*'he2O22'"):
        extras.extra_outputs(undeclared)
    assert not list(tmp_path.iterdir())  # nothing written for a bad config


def test_aux_table_without_aux_metrics(tmp_path, exp, pairs, prov):
    with pytest.raises(ConfigError, match=r"table2_segmenter.*no aux metrics were given"):
        extras.render_extras(exp, pairs, None, tmp_path, prov, [])
    aux = _aux_rows()
    with pytest.raises(ConfigError, match=r"table3_autoencoder.*'ae_ce'.*no rows in the aux metrics"):
        extras.render_extras(exp, pairs, aux[aux.aux != "ae_ce"], tmp_path, prov, [])


def test_extra_outputs(exp):
    assert extras.extra_outputs(exp) == [
        "table2_segmenter.md", "table2_segmenter.csv", "table2_segmenter.tex",
        "table3_autoencoder.md", "table3_autoencoder.csv", "table3_autoencoder.tex",
        "table4_attention.md", "table4_attention.csv", "table4_attention.tex",
        "fig8_ssim.png", "fig8_ssim.pdf", "fig9_scales.png", "fig9_scales.pdf",
    ]
    plain = copy.deepcopy(exp)
    del plain["report"]["tables"], plain["report"]["figures"]
    assert extras.extra_outputs(plain) == []
    dup = copy.deepcopy(exp)
    dup["report"]["figures"][0]["name"] = "table2_segmenter"
    with pytest.raises(ConfigError, match="already used"):
        extras.extra_outputs(dup)
    reserved = copy.deepcopy(exp)
    reserved["report"]["tables"][0]["name"] = "table"
    with pytest.raises(ConfigError, match="reserved"):
        extras.extra_outputs(reserved)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t, f: t[0].pop("auxiliary"), "report.tables[0]"),  # neither methods nor auxiliary
        (lambda t, f: t[2].update(auxiliary=["seg_ce"]), "report.tables[2]"),  # both
        (lambda t, f: t[0].update(reference="he2022"), "report.tables[0]"),  # reference without methods
        (lambda t, f: t[0].update(name="Table 2"), "report.tables[0].name"),
        (lambda t, f: f[0].update(kind="violin"), "report.figures[0]"),
        (lambda t, f: f[0].pop("metric"), "report.figures[0]"),  # a bar figure needs its metric
        (lambda t, f: f[1].update(colour="red"), "report.figures[1]"),
    ],
)
def test_schema(mutate, message):
    validate_experiment(_exp(), "ok.yaml")  # the valid block passes
    cfg = _exp()
    mutate(cfg["report"]["tables"], cfg["report"]["figures"])
    with pytest.raises(ConfigError) as err:
        validate_experiment(cfg, "bad.yaml")
    assert f"bad.yaml: {message}" in str(err.value)


def test_cli_report_with_aux_metrics(tmp_path, monkeypatch, labels_df, exp):
    monkeypatch.chdir(tmp_path)  # no work/ or data/ here: the qualitative panel is skipped
    exp["report"]["figures"] = []  # drawn in test_figures; keeps this test fast
    metrics = []
    for (d, m), sub in labels_df.groupby(["dataset", "method"]):
        metrics.append(tmp_path / f"{d}_{m}.tsv")
        sub.to_csv(metrics[-1], sep="\t", index=False)
    aux = tmp_path / "aux.tsv"
    _aux_rows().to_csv(aux, sep="\t", index=False)
    out = tmp_path / "results"
    argv = ["report", "--spec", json.dumps(exp), "--out-dir", str(out), "--aux-metrics", str(aux), "--"]
    assert cli.main(argv + [str(p) for p in metrics]) == 0
    for name in ["table.md", "table.csv", "fig_boxplots.png"] + extras.extra_outputs(exp):
        assert (out / name).stat().st_size > 0, name
    assert cli.main(["report", "--spec", json.dumps(exp), "--out-dir", str(out)] + [str(p) for p in metrics]) == 2


def test_main_table_holds_only_the_method_order(tmp_path, monkeypatch, labels_df, exp):
    """report.method_order selects the main table's rows; ablation-only methods stay in the extra tables."""
    from regbench.report.experiment import render_experiment

    monkeypatch.chdir(tmp_path)
    exp["report"]["figures"], exp["report"]["tables"] = [], []
    exp["report"]["method_order"] = ["he2022_noatt", "he2022"]
    metrics = []
    for (d, m), sub in labels_df.groupby(["dataset", "method"]):
        metrics.append(tmp_path / f"{d}_{m}.tsv")
        sub.to_csv(metrics[-1], sep="\t", index=False)
    render_experiment(exp, metrics, tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "table.csv", comment="#")
    shown = set(csv["method_name"] if "method_name" in csv else csv["method"])
    names = {METHODS[m][0] for m in ("he2022_noatt", "he2022")}
    assert names <= shown and not ({n for n, _, _ in METHODS.values()} - names) & shown


def test_image_order_arrays_are_drawn_upright():
    """Picture-order arrays (row, column) rotate into the display order; fields rotate with them."""
    import torch

    from regbench.report.figures import image_to_display
    from regbench.spatial import jacobian_determinant, warp

    pic = np.zeros((6, 4))
    pic[0, :] = 1.0  # top row of the picture
    pic[:, 0] += 2.0  # left column
    a = image_to_display(pic)
    assert a.shape == (4, 6)
    assert np.all(a[:, -1] >= 1.0)  # top row -> largest axis-1 index (drawn at the top, origin lower)
    assert np.all(a[0, :] >= 2.0)  # left column -> axis-0 index 0 (drawn at the left)
    rng = np.random.default_rng(0)
    img = rng.random((6, 4)).astype(np.float32)
    ddf = (0.3 * rng.standard_normal((2, 6, 4))).astype(np.float32)
    warped = warp(torch.from_numpy(img)[None, None], torch.from_numpy(ddf)[None])[0, 0].numpy()
    rot_ddf = image_to_display(ddf, field=True)
    rot_warped = warp(torch.from_numpy(image_to_display(img).astype(np.float32))[None, None],
                      torch.from_numpy(rot_ddf)[None])[0, 0].numpy()
    assert np.allclose(rot_warped, image_to_display(warped), atol=1e-5)  # same transformation, rotated
    jac = jacobian_determinant(torch.from_numpy(ddf)[None])[0].numpy()
    rot_jac = jacobian_determinant(torch.from_numpy(rot_ddf)[None])[0].numpy()
    assert np.allclose(rot_jac, image_to_display(jac), atol=1e-5)


def test_report_names_rename_the_main_outputs(tmp_path, monkeypatch, labels_df, exp):
    """report.names writes the main table under the paper's name (table1), lists it for Snakemake, and keeps
    extra tables from reusing it."""
    from regbench.report.experiment import render_experiment

    monkeypatch.chdir(tmp_path)
    exp["report"]["figures"], exp["report"]["tables"] = [], []
    exp["report"]["names"] = {"table": "table1", "fig_qualitative": "fig5_qualitative"}
    validate_experiment(copy.deepcopy(exp), "ok.yaml")
    outputs = extras.main_outputs(exp)
    assert outputs[:3] == ["table1.md", "table1.csv", "table1.tex"] and "fig5_qualitative.png" in outputs
    assert "table.md" not in outputs and "table_dsc_per_label.md" in outputs
    metrics = []
    for (d, m), sub in labels_df.groupby(["dataset", "method"]):
        metrics.append(tmp_path / f"{d}_{m}.tsv")
        sub.to_csv(metrics[-1], sep="\t", index=False)
    render_experiment(exp, metrics, tmp_path / "out")
    assert (tmp_path / "out" / "table1.md").stat().st_size > 0 and not (tmp_path / "out" / "table.md").exists()
    clash = copy.deepcopy(exp)
    clash["report"]["tables"] = [{"name": "table1", "title": "t", "methods": ["he2022"], "metrics": ["dsc"]}]
    with pytest.raises(ConfigError, match="reserved"):
        extras.extra_outputs(clash)
    twice = copy.deepcopy(exp)
    twice["report"]["names"] = {"table": "fig_boxplots"}
    with pytest.raises(ConfigError, match="written twice"):
        extras.main_outputs(twice)
    unknown = copy.deepcopy(exp)
    unknown["report"]["names"] = {"tabel": "table1"}
    with pytest.raises(ConfigError, match="unknown"):
        extras.main_outputs(unknown)
