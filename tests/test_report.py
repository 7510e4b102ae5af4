"""Tests of regbench.provenance and regbench.report (tables and figures) on small synthetic data."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from regbench import provenance as prov_mod
from regbench.errors import DataError
from regbench.report import (
    load_metrics,
    numeric_table,
    per_label_table,
    per_pair,
    resolve_metric,
    summary_table,
    write_table,
)
from regbench.report.figures import boxplots, qualitative_from_dirs, qualitative_panel

# ----------------------------------------------------------------------------------------------------------
# Synthetic data
# ----------------------------------------------------------------------------------------------------------

COLS = [
    "dataset", "method", "method_name", "fold", "pair_id", "fixed", "moving", "label", "label_name", "dsc",
    "hd95_mm", "hd_mm", "assd_mm", "folding_count", "folding_pct", "sdlogj", "cc", "tre_mm", "tre_std_mm",
    "runtime_s", "device",
]


def _rows(method, name, pair_label_dsc, runtime=0.5, fold="0", dataset="ds"):
    """``pair_label_dsc``: {pair_id: [dsc of label 1, dsc of label 2]}."""
    rows = []
    for p, dscs in pair_label_dsc.items():
        for lab, d in enumerate(dscs, start=1):
            rows.append(dict(
                dataset=dataset, method=method, method_name=name, fold=fold, pair_id=p, fixed=f"f_{p}",
                moving=f"m_{p}", label=lab, label_name=f"L{lab}", dsc=d, hd95_mm=2.0 * lab, hd_mm=np.nan,
                assd_mm=1.0, folding_count=10, folding_pct=0.5, sdlogj=0.1, cc=0.9, tre_mm=np.nan,
                tre_std_mm=np.nan, runtime_s=runtime, device="cpu",
            ))
    return rows


@pytest.fixture
def two_methods():
    # Method A: pair means 0.8 and 0.9 -> "0.850 ± 0.071" (ddof=1).
    a = _rows("a", "Method A", {"p1": [0.7, 0.9], "p2": [0.85, 0.95]})
    b = _rows("b", "Method B", {"p1": [0.6, 0.6], "p2": [0.7, np.nan]}, runtime=0.002)
    return pd.DataFrame(a + b, columns=COLS)


@pytest.fixture
def many_pairs():
    rng = np.random.default_rng(1)
    n = 12
    ref = rng.uniform(0.6, 0.8, n)
    rows = []
    for m, name, shift in [("ref", "Reference", 0.0), ("new", "New", 0.03), ("few", "Few", 0.01)]:
        pairs = {f"p{i}": [ref[i] + shift + rng.normal(0, 0.02)] * 2 for i in range(n if m != "few" else 3)}
        rows += _rows(m, name, pairs)
    return pd.DataFrame(rows, columns=COLS)


@pytest.fixture
def prov():
    return prov_mod.collect({"seed": 7, "scale": {"epochs": 3, "max_pairs": 4}, "protocol": "test protocol"}, ["cpu", "cpu"])


# ----------------------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------------------


def test_config_hash_is_canonical():
    h1 = prov_mod.config_hash({"a": 1, "b": {"c": [1, 2]}})
    h2 = prov_mod.config_hash({"b": {"c": [1, 2]}, "a": 1})
    assert h1 == h2 and len(h1) == 12 and int(h1, 16) >= 0
    assert prov_mod.config_hash({"a": 2, "b": {"c": [1, 2]}}) != h1


def test_git_commit_outside_repo(tmp_path):
    assert prov_mod.git_commit(tmp_path) == "unknown"


def test_collect_and_render(prov):
    assert prov["seed"] == 7 and prov["devices"] == ["cpu"]
    assert prov["scale"] == {"epochs": 3, "max_pairs": 4} and prov["protocol"] == "test protocol"
    v = prov["versions"]
    for k in ("python", "regbench", "torch", "numpy", "scipy", "pandas", "nibabel", "SimpleITK", "antspyx",
              "snakemake", "matplotlib", "seaborn"):
        assert k in v
    json.dumps(prov)
    md = prov_mod.provenance_markdown(prov)
    assert prov["commit"] in md and prov["config_hash"] in md and "epochs=3" in md
    tex = prov_mod.provenance_latex(prov)
    assert all(line.startswith("%") for line in tex.strip().splitlines())
    assert "epochs=3" in prov_mod.scale_note(prov)
    assert prov_mod.scale_note({"scale": {}}) is None


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------


def test_load_metrics(tmp_path, two_methods):
    p1, p2 = tmp_path / "a.tsv", tmp_path / "b.tsv"
    two_methods[two_methods.method == "a"].to_csv(p1, sep="\t", index=False)
    two_methods[two_methods.method == "b"].to_csv(p2, sep="\t", index=False)
    df = load_metrics([p1, p2])
    assert len(df) == len(two_methods) and set(df.method) == {"a", "b"}
    with pytest.raises(DataError, match="missing.tsv"):
        load_metrics([p1, tmp_path / "missing.tsv"])
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DataError, match="empty.tsv"):
        load_metrics([tmp_path / "empty.tsv"])
    (tmp_path / "header.tsv").write_text("\t".join(COLS) + "\n")
    with pytest.raises(DataError, match="header.tsv"):
        load_metrics(tmp_path / "header.tsv")


def test_per_pair_averages_labels(two_methods):
    pp = per_pair(two_methods)
    assert len(pp) == 4
    a = pp[pp.method == "a"].set_index("pair_id")
    assert a.loc["p1", "dsc"] == pytest.approx(0.8)
    assert a.loc["p2", "dsc"] == pytest.approx(0.9)
    assert a.loc["p1", "hd95_mm"] == pytest.approx(3.0)  # labels 1, 2 -> 2.0, 4.0
    b = pp[pp.method == "b"].set_index("pair_id")
    assert b.loc["p2", "dsc"] == pytest.approx(0.7)  # nanmean ignores the NaN label
    assert a.loc["p1", "folding_count"] == 10 and a.loc["p1", "runtime_s"] == 0.5  # taken once, not summed
    assert "label" not in pp.columns and (pp["n_labels"] == 2).all()


def test_summary_values(two_methods):
    pp = per_pair(two_methods)
    disp, num = summary_table(pp, ["dsc", "hd95", "runtime_s"], method_order=["Method B", "a"], return_numeric=True)
    assert list(disp.index) == ["Method B", "Method A"]
    assert disp.loc["Method A", "DSC ↑"] == "0.850 ± 0.071"
    assert num.loc["a", "dsc_mean"] == pytest.approx(0.85)
    assert num.loc["a", "dsc_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert disp.loc["Method A", "HD95 (mm) ↓"] == "3.00 ± 0.00"
    assert disp.loc["Method B", "Runtime (s) ↓"].startswith("2.00e-03")
    assert list(disp["n_pairs"]) == [2, 2]
    assert numeric_table(disp).equals(num)


def test_resolve_metric_px():
    df = pd.DataFrame({"hd95_px": [1.0]})
    assert resolve_metric(df, "hd95") == "hd95_px" == resolve_metric(df, "hd95_mm")
    with pytest.raises(KeyError):
        resolve_metric(df, "tre")


def test_wilcoxon_matches_scipy(many_pairs):
    pp = per_pair(many_pairs)
    disp, num = summary_table(pp, ["dsc"], reference="ref", return_numeric=True)
    x = pp[pp.method == "new"].set_index("pair_id")["dsc"]
    y = pp[pp.method == "ref"].set_index("pair_id")["dsc"].loc[x.index]
    expected = wilcoxon(x.to_numpy(), y.to_numpy()).pvalue
    assert num.loc["new", "p_wilcoxon_vs_ref"] == pytest.approx(expected)
    assert math.isnan(num.loc["ref", "p_wilcoxon_vs_ref"])
    assert math.isnan(num.loc["few", "p_wilcoxon_vs_ref"])  # 3 matched pairs < min_pairs
    assert num.loc["few", "n_paired_vs_ref"] == 3
    pcol = [c for c in disp.columns if c.startswith("p vs Reference")]
    assert pcol and disp.loc["Reference", pcol[0]] == "(ref.)"
    with pytest.raises(ValueError, match="nope"):
        summary_table(pp, ["dsc"], reference="nope")


def test_the_p_column_is_left_out_when_no_method_can_be_tested(many_pairs):
    """With fewer than min_pairs matched pairs for every method (here: only the 'few' method's 3 pairs, or no DSC
    at all) the display has no p column of dashes; the numeric companion keeps NaN p-values and the counts."""
    pp = per_pair(many_pairs)
    few = pp[pp.method.isin(["ref", "few"])]
    disp, num = summary_table(few, ["dsc"], reference="ref", return_numeric=True)
    assert not [c for c in disp.columns if c.startswith("p vs")]
    assert num.loc["few", "n_paired_vs_ref"] == 3 and math.isnan(num.loc["few", "p_wilcoxon_vs_ref"])
    no_dsc = pp.assign(dsc=float("nan"))
    disp = summary_table(no_dsc, ["dsc"], reference="ref")
    assert not [c for c in disp.columns if c.startswith("p vs")]
    disp = summary_table(pp, ["dsc"], reference="ref")  # 'new' has enough pairs: the column is there
    assert [c for c in disp.columns if c.startswith("p vs")]


def test_paper_columns(two_methods):
    pp = per_pair(two_methods)
    disp = summary_table(pp, ["dsc", "hd95_mm"], paper_values={"Method A": {"dsc": "0.79 ± 0.08"}, "b": {"dsc": 0.7}})
    cols = list(disp.columns)
    assert cols[:3] == ["DSC ↑ (paper)", "DSC ↑ (ours)", "HD95 (mm) ↓"]  # no paper value for HD95 -> one column
    assert disp.loc["Method A", "DSC ↑ (paper)"] == "0.79 ± 0.08"
    assert disp.loc["Method B", "DSC ↑ (paper)"] == "0.700"
    num = numeric_table(disp)
    assert num.loc["a", "dsc_paper_mean"] == pytest.approx(0.79) and num.loc["a", "dsc_paper_std"] == pytest.approx(0.08)
    disp2 = summary_table(pp, ["dsc"], paper_values={"a": {"dsc": 0.8}})
    assert disp2.loc["Method B", "DSC ↑ (paper)"] == "—"


def test_per_label_table(two_methods):
    t = per_label_table(two_methods, "dsc")
    assert list(t.columns) == ["L1", "L2"]
    assert t.loc["Method A", "L1"] == f"0.775 ± {np.std([0.7, 0.85], ddof=1):.3f}"
    assert t.loc["Method B", "L2"] == "0.600"  # single valid value: mean only


def test_write_table(tmp_path, two_methods, prov):
    pp = per_pair(two_methods)
    disp = summary_table(pp, ["dsc", "folding_pct"])
    note = prov_mod.scale_note(prov)
    paths = write_table(disp, tmp_path / "out" / "tab.summary", "My title", prov, [note, "another note"])
    assert {k: v.name for k, v in paths.items()} == {"md": "tab.summary.md", "csv": "tab.summary.csv", "tex": "tab.summary.tex"}
    md, csv, tex = (paths[k].read_text() for k in ("md", "csv", "tex"))
    for text in (md, csv, tex):
        assert prov["config_hash"] in text and prov["commit"] in text
        assert "another note" in text and "scaled-down run" in text
    assert "# My title" in md and "0.850 ± 0.071" in md and r"\|J\|≤0 (%) ↓" in md
    back = pd.read_csv(paths["csv"], comment="#", index_col=0)
    assert back.loc["a", "dsc_mean"] == pytest.approx(0.85)
    assert {"dsc_std", "folding_pct_mean", "n_pairs"} <= set(back.columns)
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"0.850 $\pm$ 0.071" in tex
    assert not list(tmp_path.glob("out/.*"))  # no temporary files left behind


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------


def _check_written(paths):
    assert set(paths) == {"png", "pdf"}
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 1000
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and paths["pdf"].read_bytes()[:4] == b"%PDF"


def test_boxplots(tmp_path, many_pairs):
    pp = per_pair(many_pairs)
    _check_written(boxplots(pp, ["dsc", "hd95", "folding_pct", "runtime_s", "tre"], tmp_path / "box", title="t"))


def _synthetic(shape, rng):
    nd = len(shape)
    g = np.indices(shape).astype(np.float32)
    c = np.array([s / 2 for s in shape], dtype=np.float32).reshape(-1, *[1] * nd)
    fixed_seg = (((g - c) ** 2).sum(0) < (min(shape) / 4) ** 2).astype(np.int32)
    moving_seg = (((g - c - 2) ** 2).sum(0) < (min(shape) / 4) ** 2).astype(np.int32) * 2
    fixed = fixed_seg + 0.1 * rng.standard_normal(shape).astype(np.float32)
    moving = (moving_seg > 0) + 0.1 * rng.standard_normal(shape).astype(np.float32)
    ddf = rng.standard_normal((nd, *shape)).astype(np.float32)
    return fixed, moving, fixed_seg, moving_seg, ddf


@pytest.mark.parametrize("shape", [(16, 16, 16), (32, 32)])
def test_qualitative_panel(tmp_path, shape):
    rng = np.random.default_rng(0)
    f, m, fs, ms, ddf = _synthetic(shape, rng)
    results = {
        "Method A": dict(warped=f, warped_seg=fs, ddf=ddf),
        "Method B": dict(warped=m, warped_seg=ms, ddf=None),
    }
    _check_written(qualitative_panel(f, m, fs, ms, results, tmp_path / "qual", title="pair"))
    with pytest.raises(ValueError, match="DDF shape"):
        qualitative_panel(f, m, fs, ms, {"bad": dict(warped=f, ddf=ddf[:1])}, tmp_path / "bad")


def test_qualitative_from_dirs(tmp_path, monkeypatch, caplog):
    from regbench.io import save_ddf, save_image

    rng = np.random.default_rng(0)
    f, m, fs, ms, ddf = _synthetic((16, 16, 16), rng)
    aff = np.eye(4)
    data = tmp_path / "prepared"
    save_image(data / "img" / "c1_t1.nii.gz", f, aff)
    save_image(data / "img" / "c2_t1.nii.gz", m, aff)
    save_image(data / "img" / "c1_seg.nii.gz", fs, aff, dtype=np.int16)
    save_image(data / "img" / "c2_seg.nii.gz", ms, aff, dtype=np.int16)
    pd.DataFrame({
        "case": ["c1", "c2"], "split": ["test", "test"],
        "seg": ["img/c1_seg.nii.gz", "img/c2_seg.nii.gz"], "t1": ["img/c1_t1.nii.gz", "img/c2_t1.nii.gz"],
    }).to_csv(data / "cases.tsv", sep="\t", index=False)
    reg = tmp_path / "reg" / "a"
    save_ddf(reg / "p1_ddf.nii.gz", ddf, aff)
    save_image(reg / "p1_warped.nii.gz", f, aff)
    save_image(reg / "p1_warped_seg.nii.gz", fs, aff, dtype=np.int16)
    pd.DataFrame([{
        "pair_id": "p1", "fixed": "c1", "moving": "c2", "ddf": "reg/a/p1_ddf.nii.gz",  # relative to repo root
        "warped": str(reg / "p1_warped.nii.gz"), "warped_seg": "reg/a/p1_warped_seg.nii.gz",
        "runtime_s": 0.1, "device": "cpu",
    }]).to_csv(reg / "pairs.tsv", sep="\t", index=False)
    other = tmp_path / "reg" / "b"
    other.mkdir(parents=True)
    pd.DataFrame([{"pair_id": "p9", "fixed": "c1", "moving": "c2", "ddf": "", "warped": "", "warped_seg": "",
                   "runtime_s": 0.1, "device": "cpu"}]).to_csv(other / "pairs.tsv", sep="\t", index=False)
    monkeypatch.chdir(tmp_path)
    paths = qualitative_from_dirs(data / "cases.tsv", {"A": reg, "B": other}, None, "t1", tmp_path / "fig" / "q")
    _check_written(paths)
    assert any("has no pair" in r.message for r in caplog.records)
    with pytest.raises(DataError, match="p42"):
        qualitative_from_dirs(data / "cases.tsv", {"A": reg}, "p42", "t1", tmp_path / "fig" / "q2")


def test_paired_ttest_matches_scipy(many_pairs):
    """paired_test="ttest" gives scipy's ttest_rel p on the matched per-pair DSC (Cai et al. report t-tests)."""
    from scipy.stats import ttest_rel

    pp = per_pair(many_pairs)
    disp, num = summary_table(pp, ["dsc"], reference="ref", paired_test="ttest", return_numeric=True)
    x = pp[pp.method == "new"].set_index("pair_id")["dsc"]
    y = pp[pp.method == "ref"].set_index("pair_id")["dsc"].loc[x.index]
    assert num.loc["new", "p_ttest_vs_ref"] == pytest.approx(ttest_rel(x.to_numpy(), y.to_numpy()).pvalue)
    assert "p_wilcoxon_vs_ref" not in num.columns
    assert any(c.startswith("p vs Reference (paired t-test") for c in disp.columns)
    with pytest.raises(ValueError, match="unknown paired test"):
        summary_table(pp, ["dsc"], reference="ref", paired_test="anova")
