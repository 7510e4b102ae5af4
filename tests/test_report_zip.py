"""Snakemake's report (`make report-zip`, the last step of `make report`): one results/report.zip that holds every
table and figure of the experiments `make report` renders, filed by paper (category), table or figure
(subcategory) and experiment/datasets (labels), each byte-identical to the file under results/.

The test runs the Makefile's own recipe in a copy of the workflow and of those experiments' results (so nothing in
the working tree is written), then reads the zip: its report.html indexes the files (`var results`, `var
categories`) and the data folder holds them."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from regbench.config import report_rule, resolve_extends
from regbench.report.extras import main_names

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_report_configs() -> list[str]:
    """REPORT_CONFIGS of the Makefile, as `make` expands it."""
    r = subprocess.run(["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "print-report-configs"],
                       input="print-report-configs:\n\t@echo $(REPORT_CONFIGS)\n", cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.fixture(scope="module")
def report_zip(tmp_path_factory):
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    configs = make_report_configs()
    loaded = {c: resolve_extends(yaml.safe_load((REPO / c).read_text()), c, REPO) for c in configs}
    experiments = {Path(c).stem: exp["experiment"] for c, exp in loaded.items()}
    # the summary table's stem per experiment (`report.names` may rename it, e.g. he2022's table1)
    summary = {exp["experiment"]: main_names(exp)["table"] for exp in loaded.values()}
    work = tmp_path_factory.mktemp("report")
    for name in ("config", "workflow", "envs"):
        shutil.copytree(REPO / name, work / name)
    for name in ("Snakefile", "Makefile", "requirements.txt", "pyproject.toml"):
        shutil.copy(REPO / name, work / name)
    for exp in experiments.values():
        src = REPO / "results" / exp
        if not src.is_dir():
            pytest.fail(f"results/{exp} is missing: `make report` renders it from committed metrics")
        # nested experiments (he2022/studies/clip inside he2022) are copied with their outer one, then again
        shutil.copytree(src, work / "results" / exp, ignore=shutil.ignore_patterns("metrics", "aux"),
                        dirs_exist_ok=True)
    (work / ".venv").mkdir()
    (work / ".venv" / ".installed").touch()  # the venv of this test run stands in for the copy's own
    r = subprocess.run(["make", "report-zip", f"BIN={BIN}"], cwd=work, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "wrote results/report.zip" in r.stdout
    return work, work / "results" / "report.zip", experiments, summary


def _index(zf: zipfile.ZipFile) -> tuple[dict, dict]:
    html = zf.read("report/report.html").decode()
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html, re.S).group(1))
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", html, re.S).group(1))
    return results, categories


def _declared_outputs(work: Path, experiments) -> dict[str, list[str]]:
    """The report rules' declared outputs per experiment, from a dry-run (what `rule report_<exp>` writes)."""
    by_rule = {report_rule(e): e for e in experiments.values()}
    rules = list(by_rule)
    r = subprocess.run([str(BIN / "snakemake"), *rules, "-n", "--forceall", "--nolock", "--configfile",
                        "config/config.yaml"], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = {}
    for rule, outputs in re.findall(r"^rule (report_\w+):\n(?:    .*\n)*?    output: (.*)$", r.stdout + r.stderr,
                                    flags=re.M):
        out[by_rule[rule]] = [p.strip() for p in outputs.split(",")]
    return out


def test_report_zip_holds_every_table_and_figure(report_zip):
    work, path, experiments, summary = report_zip
    with zipfile.ZipFile(path) as zf:
        results, categories = _index(zf)
        names = set(zf.namelist())
        declared = _declared_outputs(work, experiments)
        assert set(declared) == set(experiments.values())
        for exp, outputs in declared.items():
            wanted = [p for p in outputs if p.endswith((".csv", ".png"))
                      or (p.endswith(".md") and p[:-3] + ".csv" not in outputs)]
            tables = [p for p in wanted if not p.endswith(".png")]
            assert f"results/{exp}/{summary[exp]}.csv" in tables, (exp, tables)
            for p in wanted:
                assert p in results, f"{p} is not in the report"
                entry = results[p]
                assert entry["labels"]["experiment"] == exp
                assert entry["labels"]["kind"] == ("figure" if p.endswith(".png") else "table")
                member = f"report/{entry['data_uri']}"
                assert member in names, member
                assert zf.read(member) == (work / p).read_bytes(), p
    # filed by paper, then by table or figure
    assert "He et al. 2022" in categories and "Demo (synthetic, not a paper)" in categories
    he = categories["He et al. 2022"]
    for sub in ("table1", "table2_attention_segmentation", "table3_autoencoder", "table4_attention", "fig8_ssim"):
        assert sub in he, sorted(he)
    assert "results/he2022/table1.csv" in he["table1"]
    assert "results/he2022/studies/steps_1000/table1.csv" in he["table1"]
