"""Tests of the training-budget series (regbench.report.budget) on synthetic metrics of three "experiments"
that register the same pairs and whose DSC rises with the step count by a known amount."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from regbench.config import validate_experiment
from regbench.errors import ConfigError, DataError
from regbench.report import budget, extras, tables

N_PAIRS = 15
DATASETS = ("jsrt", "mont")
METHODS = {"he2022": "He et al. 2022", "acregnet": "AC-RegNet"}
#: experiment -> (steps, DSC gain over the 300-step run)
RUNS = {"cxr_300": (300, 0.00), "cxr_1000": (1000, 0.05), "cxr_4000": (4000, 0.08)}


def _rows(experiment: str, pairs=None) -> pd.DataFrame:
    """Label-level metrics of one run: one label per pair, DSC = base(pair) + gain(run) + small noise."""
    _, gain = RUNS[experiment]
    rng = np.random.default_rng(1 + list(RUNS).index(experiment))
    base = np.random.default_rng(0).uniform(0.70, 0.80, N_PAIRS)
    rows = []
    for d in DATASETS:
        for m, name in METHODS.items():
            for i in range(N_PAIRS):
                fixed, moving = pairs[i] if pairs else (f"c{i}", f"c{(i + 1) % N_PAIRS}")
                dsc = base[i] + gain + rng.normal(0, 0.003)
                rows.append({"dataset": d, "method": m, "method_name": name, "fold": "0", "pair_id": f"p{i}",
                             "fixed": fixed, "moving": moving, "label": 1, "label_name": "lung", "dsc": dsc,
                             "hd_px": 40 * (1 - dsc), "assd_px": 8 * (1 - dsc), "folding_count": 100.0 * i,
                             "runtime_s": 0.01, "device": "cpu"})
    return pd.DataFrame(rows)


def _write_run(root, experiment: str, df: pd.DataFrame) -> None:
    for (d, m), g in df.groupby(["dataset", "method"]):
        p = root / experiment / "metrics" / d / m / "fold0.tsv"
        p.parent.mkdir(parents=True, exist_ok=True)
        g.to_csv(p, sep="\t", index=False)


def _exp() -> dict:
    learned = {"kind": "learned", "model": "voxelmorph", "train": {"steps": 10, "batch_size": 1, "lr": 1e-3, "losses": [{"name": "mse"}]}}
    series = {"name": "training_budget", "title": "DSC vs steps", "methods": ["he2022", "acregnet"],
              "metrics": ["dsc", "folding_count"],
              "runs": [{"experiment": e, "steps": s, **({"note": "aux 300 steps"} if s == 300 else {})}
                       for e, (s, _) in RUNS.items()]}
    return validate_experiment({
        "experiment": "cxr_4000", "protocol": "synthetic", "seed": 0,
        "datasets": {d: {"preprocess": "demo", "modality": "image", "folds": [0], "labels": {"1": "lung"},
                         "unit": "px"} for d in DATASETS},
        "methods": {m: {**copy.deepcopy(learned), "name": n} for m, n in METHODS.items()},
        "report": {"title": "Synthetic", "metrics": ["dsc"],
                   "paper_values": {"jsrt": {"he2022": {"dsc": "0.970 ± 0.005"}}},
                   "budget_series": [series]},
    }, "test")


@pytest.fixture
def results(tmp_path):
    for e in ("cxr_300", "cxr_1000"):
        _write_run(tmp_path / "results", e, _rows(e))
    return tmp_path / "results"


def test_outputs_and_inputs():
    exp = _exp()
    assert budget.outputs(exp) == [f"training_budget.{x}" for x in ("md", "csv", "tex", "png", "pdf")]
    assert set(budget.outputs(exp)) <= set(extras.extra_outputs(exp))
    files = budget.input_files(exp)
    assert len(files) == 2 * 2 * 2  # other runs x datasets x methods (one fold)
    assert "results/cxr_300/metrics/mont/acregnet/fold0.tsv" in files
    assert not any("cxr_4000" in f for f in files)  # the rendering experiment's own metrics come from the report


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["runs"].__delitem__(slice(1, None)), "at least two runs"),
    (lambda s: s["runs"].reverse(), "ascending"),
    (lambda s: s["runs"][1].update(experiment="cxr_300"), "appears twice"),
    (lambda s: s["methods"].append("nope"), "not learned methods"),
    (lambda s: s.update(name="table"), "already used"),
])
def test_check_series_rejects(mutate, message):
    exp = _exp()
    mutate(exp["report"]["budget_series"][0])
    with pytest.raises(ConfigError, match=message):
        extras.extra_outputs(exp)


def test_name_clash_with_an_extra_table():
    exp = _exp()
    exp["report"]["tables"] = [{"name": "training_budget", "title": "t", "metrics": ["dsc"], "methods": ["he2022"]}]
    with pytest.raises(ConfigError, match="already used"):
        extras.extra_outputs(exp)


def test_schema_rejects_a_run_without_steps():
    exp = _exp()
    exp["report"]["budget_series"][0]["runs"][0].pop("steps")
    with pytest.raises(ConfigError):
        validate_experiment(exp, "test")


def test_series_table_values_and_tests(results):
    exp = _exp()
    own = tables.per_pair(_rows("cxr_4000"))
    runs = budget.load_runs(exp["report"]["budget_series"][0], exp, own, results)
    assert sorted(runs["steps"].unique()) == [300, 1000, 4000]
    table = budget.series_table(exp["report"]["budget_series"][0], runs, exp["report"]["paper_values"])
    num = tables.numeric_table(table)
    for d in DATASETS:
        for m in METHODS:
            sub = num[(num["dataset"] == d) & num.index.str.startswith(m + "@")]
            assert list(sub["steps"]) == [300, 1000, 4000]
            means = sub["dsc_mean"].to_numpy()
            # the synthetic gains are +0.05 then +0.03, noise 0.003
            assert np.allclose(np.diff(means), [0.05, 0.03], atol=0.004)
            assert np.isnan(sub["p_prev"].iloc[0]) and (sub["p_prev"].iloc[1:] < 0.001).all()
    jsrt = table[table["Dataset"] == "jsrt"]
    assert list(jsrt[budget.STEPS]) == [300, 1000, 4000] * 2  # display rows carry their own budget
    assert list(jsrt[budget.P_PREV])[:3] == ["—", "<0.001", "<0.001"]
    assert (jsrt.loc[jsrt.index.str.startswith("He et al."), "DSC ↑ (paper)"] == "0.970 ± 0.005").all()
    assert (jsrt.loc[jsrt.index.str.startswith("AC-RegNet"), "DSC ↑ (paper)"] == "—").all()


def test_render_series_writes_notes_and_figure(tmp_path, results):
    exp = _exp()
    own = tables.per_pair(_rows("cxr_4000"))
    out = tmp_path / "out"
    written = budget.render_series(exp, own, out, None, ["SCALED-DOWN RUN (not the paper protocol): test"],
                                   results_root=results)
    assert sorted(p.name for p in written) == sorted(budget.outputs(exp))
    md = (out / "training_budget.md").read_text()
    assert "SCALED-DOWN" in md and "300 steps = experiment cxr_300 (aux 300 steps)" in md
    assert (out / "training_budget.png").stat().st_size > 10_000


def test_missing_run_names_the_file_and_the_fix(tmp_path):
    exp = _exp()
    with pytest.raises(DataError, match=r"cxr_300/metrics/.*run that experiment first"):
        budget.load_runs(exp["report"]["budget_series"][0], exp, tables.per_pair(_rows("cxr_4000")), tmp_path)


def test_runs_with_other_test_pairs_are_refused(tmp_path):
    exp = _exp()
    _write_run(tmp_path, "cxr_300", _rows("cxr_300"))
    other = [(f"c{i}", f"c{(i + 2) % N_PAIRS}") for i in range(N_PAIRS)]
    _write_run(tmp_path, "cxr_1000", _rows("cxr_1000", pairs=other))
    with pytest.raises(DataError, match="different test pairs"):
        budget.load_runs(exp["report"]["budget_series"][0], exp, tables.per_pair(_rows("cxr_4000")), tmp_path)


def test_cli_report_renders_the_series_from_sibling_results(tmp_path, monkeypatch, results):
    """`regbench report --out-dir results/<exp>` finds the other runs under the out dir's parent."""
    import json

    from regbench import cli

    monkeypatch.chdir(tmp_path)  # no work/ or data/ here: the qualitative panel is skipped
    exp = _exp()
    _write_run(results, "cxr_4000", _rows("cxr_4000"))
    own = sorted(str(p) for p in (results / "cxr_4000" / "metrics").rglob("fold0.tsv"))
    out = results / "cxr_4000"
    assert cli.main(["report", "--spec", json.dumps(exp), "--out-dir", str(out), *own]) == 0
    csv = pd.read_csv(out / "training_budget.csv", comment="#", index_col=0)
    assert sorted(csv["steps"].unique()) == [300, 1000, 4000] and len(csv) == 2 * 2 * 3


def test_training_curves(tmp_path, caplog):
    """The figure is drawn from the runs' train_log.tsv; without logs the existing figure is kept."""
    exp = _exp()
    exp["report"]["training_curves"] = [{"name": "fig_training", "title": "Training", "methods": ["he2022"],
                                         "terms": ["loss", "ce"], "window": 5}]
    assert "fig_training.png" in extras.extra_outputs(exp)
    models = tmp_path / "models"
    out = tmp_path / "out"
    assert budget.render_curves(exp, out, models, None) == []  # no logs: nothing written, a warning
    assert "keeping the existing" in caplog.text
    steps = np.arange(1, 101)
    for d in DATASETS:
        p = models / d / "he2022" / "fold0" / "train_log.tsv"
        p.parent.mkdir(parents=True)
        pd.DataFrame({"step": steps, "ce": 1 / steps, "ncc": -steps / 100, "loss": 1 / steps - steps / 100,
                      "elapsed_s": steps * 0.1}).to_csv(p, sep="\t", index=False)
    written = budget.render_curves(exp, out, models, "SCALED-DOWN RUN: test")
    assert sorted(p.name for p in written) == ["fig_training.pdf", "fig_training.png"]
    assert (out / "fig_training.png").stat().st_size > 10_000
    exp["report"]["training_curves"][0]["methods"] = ["nope"]
    with pytest.raises(ConfigError, match="not learned methods"):
        extras.extra_outputs(exp)


def test_nested_experiment_names_find_their_sibling_runs(tmp_path):
    """An experiment named with folders (``paper/studies/b``) reads the other runs from the results root, not
    from the folder above its own (the he2022/studies/* series)."""
    exp = _exp()
    exp["experiment"] = "paper/studies/cxr_4000"
    for r in exp["report"]["budget_series"][0]["runs"]:
        r["experiment"] = f"paper/studies/{r['experiment']}"
    results = tmp_path / "results"
    for e in ("cxr_300", "cxr_1000"):
        _write_run(results / "paper" / "studies", e, _rows(e))
    out = results / "paper" / "studies" / "cxr_4000"
    budget.render_series(exp, tables.per_pair(_rows("cxr_4000")), out, None, ["test"])
    csv = pd.read_csv(out / "training_budget.csv", comment="#", index_col=0)
    assert sorted(csv["steps"].unique()) == [300, 1000, 4000]
