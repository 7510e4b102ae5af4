"""results/README.md, the front page: items found or "not yet run", their protocol and the gap to the paper."""

import json

import pandas as pd
import pytest
import yaml

from regbench.errors import ConfigError
from regbench.report.front import headline_gap, load_catalogue, write_results_index

from conftest import REPO


def _run_dir(path, scale):
    path.mkdir(parents=True, exist_ok=True)
    (path / "provenance.json").write_text(json.dumps({"scale": scale}))


def _tree(tmp_path):
    res = tmp_path / "results"
    _run_dir(res / "p1", {"max_train_steps": 300, "note": "text"})
    (res / "p1" / "table.md").write_text("| x |")
    pd.DataFrame({"method": ["ours", "ours", "base"], "dsc_mean": [0.80, 0.90, 0.5],
                  "dsc_paper_mean": [0.97, 0.95, 0.6], "dataset": ["a", "b", "a"]}).to_csv(res / "p1" / "table.csv", index=False)
    _run_dir(res / "p1" / "demo", {"max_train_steps": 10})
    (res / "p1" / "demo" / "fig2.png").write_bytes(b"png")
    (res / "p1" / "demo" / "table4.md").write_text("| x |")  # a demo table with the paper's values beside
    pd.DataFrame({"method": ["ours"], "dsc_mean": [0.70], "dsc_paper_mean": [0.80], "dataset": ["demo"]}).to_csv(
        res / "p1" / "demo" / "table4.csv", index=False)
    _run_dir(res / "p2", {})
    (res / "p2" / "table3.md").write_text("| x |")
    pd.DataFrame({"method": ["ours"] * 2, "metric": ["dsc"] * 2, "label": [1, 2], "scale": [100.0] * 2,
                  "mean": [60.0, 50.0], "paper_mean": [63.0, 55.0]}).to_csv(res / "p2" / "table3.csv", index=False)
    cat = {"papers": {
        "p1": {"title": "Paper one", "config": "config/p1.yaml", "proposed": "ours",
               "items": [{"name": "table1", "file": "p1/table"}, {"name": "fig2"}, {"name": "table9"},
                         {"name": "table4"}]},
        "p2": {"title": "Paper two", "config": "config/p2.yaml", "proposed": "ours", "items": [{"name": "table3"}]},
    }}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "p1.yaml").write_text("x: 1")
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump(cat))
    return res


def test_front_page_lists_protocols_gaps_and_missing_items(tmp_path):
    res = _tree(tmp_path)
    text = write_results_index(tmp_path / "cat.yaml", res, config_root=tmp_path).read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Item")}
    assert rows["table1"][1:] == ["p1/table.md", "scaled: max_train_steps=300", "dsc a -0.170, b -0.050"]
    assert rows["fig2"][1:] == ["p1/demo/fig2.png", "demo (max_train_steps=10)", "—"]
    assert rows["table9"][1:] == ["—", "not yet run", "—"]
    assert rows["table4"][1:] == ["p1/demo/table4.md", "demo (max_train_steps=10)",
                                  "dsc demo -0.100 (demo data: not comparable)"]
    assert rows["table3"][1:] == ["p2/table3.md", "paper's", "dsc -4.000 pp"]
    assert "`config/p1.yaml` · 3 of 4 items rendered\n" in text
    assert "`config/p2.yaml` (not written yet)" in text
    (res / "p2" / "studies").mkdir()
    (res / "p2" / "studies" / "README.md").write_text("# studies")  # linked from its paper's line
    text = write_results_index(tmp_path / "cat.yaml", res, config_root=tmp_path).read_text()
    assert "1 of 1 items rendered · studies: [p2/studies/](p2/studies/README.md)" in text
    assert "p1/studies" not in text


def test_headline_gap_without_paper_values_is_empty(tmp_path):
    csv = tmp_path / "t.csv"
    pd.DataFrame({"method": ["ours"], "dsc_mean": [0.8]}).to_csv(csv, index=False)
    assert headline_gap(csv, "ours", "dsc") == ""
    assert headline_gap(tmp_path / "missing.csv", "ours", "dsc") == ""


def test_bad_catalogue_is_named(tmp_path):
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump({"papers": {"p": {"items": [{"what": "no name"}]}}}))
    with pytest.raises(ConfigError, match=r"cat\.yaml: papers\.p\.items"):
        load_catalogue(tmp_path / "cat.yaml")


def test_repository_catalogue_covers_the_five_papers():
    papers = load_catalogue(REPO / "config" / "results_index.yaml")
    assert set(papers) == {"he2022", "zhu2021", "huang2021", "ding2021", "cai2023"}


def test_partly_run_experiment_says_what_is_missing(tmp_path):
    """A run rendered from the metrics at hand names the datasets and rows it lacks (missing_runs), and the
    front page carries that beside the protocol."""
    from regbench.report.experiment import missing_runs

    exp = {"datasets": {"a": {"folds": [0, 1]}, "b": {"folds": [0]}, "t": {"folds": [0], "train_only": True}},
           "methods": {"before": {"name": "Before"}, "net": {"name": "Net"},
                       "only_b": {"name": "OnlyB", "datasets": ["b"]}},
           "auxiliary": {"seg": {"name": "Segmenter"}}}
    df = pd.DataFrame({"dataset": ["a", "a", "a"], "method": ["before", "before", "net"], "fold": [0, 1, 0]})
    aux = pd.DataFrame({"dataset": ["a", "a"], "aux": ["seg", "seg"], "fold": [0, 1]})
    assert missing_runs(exp, df, aux) == ["a: Net (fold 1)", "b: every row"]
    assert missing_runs(exp, df) == ["a: Net (fold 1)", "b: every row"]  # aux not checked without aux metrics
    full = pd.DataFrame({"dataset": ["a"] * 4 + ["b"] * 3, "method": ["before", "before", "net", "net",
                                                                       "before", "net", "only_b"],
                         "fold": [0, 1, 0, 1, 0, 0, 0]})
    assert missing_runs(exp, full, aux) == ["b: auxiliary Segmenter"]
    assert missing_runs(exp, full) == []

    res = tmp_path / "results"
    (res / "p1").mkdir(parents=True)
    (res / "p1" / "provenance.json").write_text(json.dumps({"scale": {}, "not_yet_run": ["b: every row"]}))
    (res / "p1" / "table1.md").write_text("| x |")
    cat = {"papers": {"p1": {"title": "P", "config": "config/p1.yaml", "proposed": "net",
                             "items": [{"name": "table1"}]}}}
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump(cat))
    text = write_results_index(tmp_path / "cat.yaml", res, config_root=tmp_path).read_text()
    assert "paper's; partial, not yet run: b: every row" in text


def test_partly_run_experiment_skips_the_ablation_items_it_cannot_fill():
    from regbench.report.experiment import _without_unrun_items

    exp = {"report": {"tables": [{"name": "t_ok", "methods": ["a", "b"]}, {"name": "t_wait", "methods": ["a", "c"]},
                                 {"name": "t_aux", "auxiliary": ["seg"]}],
                      "figures": [{"name": "f_wait", "methods": ["c"]}]}}
    pairs = pd.DataFrame({"method": ["a", "b"]})
    kept = _without_unrun_items(exp, pairs, pd.DataFrame({"aux": ["seg"]}))["report"]
    assert [t["name"] for t in kept["tables"]] == ["t_ok", "t_aux"] and kept["figures"] == []
    assert [t["name"] for t in _without_unrun_items(exp, pairs, None)["report"]["tables"]] == ["t_ok"]
    assert len(exp["report"]["tables"]) == 3  # the config itself is not changed
