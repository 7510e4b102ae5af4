"""The Snakemake workflow: the full DAG builds offline, the lint is clean, and (slow) the pipeline runs
end to end on a small config and is then up to date."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def run(args, cwd=REPO, timeout=600):
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/demo.yaml"])
def test_dry_run_builds_the_dag(configfile):
    r = run(["-n", "--nolock", "--forceall", "--configfile", configfile, "--quiet", "rules"])
    assert r.returncode == 0, r.stderr[-3000:]
    for rule in ("fetch", "preprocess", "train", "register", "evaluate", "report"):
        assert rule in r.stdout + r.stderr
    if configfile == "config/config.yaml":  # He et al. 2022: auxiliary networks before registration training
        for rule in ("train_aux", "evaluate_aux", "report_he2022", "report_demo"):
            assert rule in r.stdout + r.stderr


def test_he2022_training_waits_for_its_auxiliary_networks():
    target = "work/he2022/models/jsrt/he2022/fold0/model.pt"
    r = run(["-n", "--nolock", "--forceall", "--configfile", "config/papers/he2022.yaml", "--quiet", "rules",
             "--printshellcmds", target])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    # the training job reads its frozen networks from the store; the experiment sees its network through a link
    assert re.search(r"regbench train --prep data/prep_train/[0-9a-f]{12} --out work/models/[0-9a-f]{12}/steps4000 "
                     r"--run-dir work/models/[0-9a-f]{12} --fold 0 --attention work/aux/[0-9a-f]{12}/steps1000/model.pt "
                     r"--component autoencoder=work/aux/[0-9a-f]{12}/steps1000/model.pt", out), out[-3000:]
    assert re.search(r"regbench link-run --src work/models/[0-9a-f]{12}/steps4000 --dst work/he2022/models/jsrt/he2022/fold0",
                     out)
    assert "train_aux" in out and "seg_ce" not in out  # only the networks this method uses


@pytest.mark.parametrize("configfile, builds_other_runs", [("config/papers/he2022/studies/steps_4000.yaml", False),
                                                            ("config/config.yaml", True)])
def test_budget_series_reads_other_experiments_metrics(configfile, builds_other_runs):
    """Alone, he2022/studies/steps_4000's budget series reads the committed metrics of he2022/studies/steps_300 / steps_1000 as source files;
    in the full configuration it waits for those experiments' evaluate jobs."""
    target = "results/he2022/studies/steps_4000/training_budget.md"
    r = run(["-n", "--nolock", "--forceall", "--configfile", configfile, "--printshellcmds", target])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "--out-dir results/he2022/studies/steps_4000" in out
    built = "--out results/he2022/studies/steps_300/metrics/jsrt/he2022/fold0.tsv" in out
    assert built == builds_other_runs
    assert ("work/he2022/studies/steps_1000/models/" in out) == builds_other_runs


def test_lint_is_clean():
    r = run(["--lint", "--nolock", "--configfile", "config/config.yaml"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Congratulations" in r.stdout + r.stderr


def test_invalid_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (REPO / "config" / "demo.yaml").read_text().replace("seed: 0", "seed: -3")
    bad.write_text(text)
    r = run(["-n", "--nolock", "--configfile", str(bad)])
    assert r.returncode != 0
    assert "seed: -3 is less than the minimum of 0" in r.stdout + r.stderr


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    for name in ("config", "workflow", "envs"):
        shutil.copytree(REPO / name, work / name)
    shutil.copy(REPO / "Snakefile", work / "Snakefile")
    shutil.copy(REPO / "tests" / "configs" / "e2e.yaml", work / "config" / "e2e.yaml")
    args = ["--cores", "2", "--resources", "gpu=1", "--configfile", "config/e2e.yaml"]
    r = run(args, cwd=work, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    out = work / "results" / "e2e"
    for f in ("table.md", "table.csv", "table.tex", "fig_boxplots.png", "fig_qualitative.png"):
        assert (out / f).stat().st_size > 0, f
    md = (out / "table.md").read_text()
    assert "SCALED-DOWN RUN" in md and "max_train_steps=10" in md and "Protocol:" in md
    m = pd.read_csv(out / "metrics" / "demo" / "before" / "fold0.tsv", sep="\t")
    assert set(m["label_name"]) == {"CSF", "GM", "WM"} and m["pair_id"].nunique() == 2
    assert m["tre_mm"].gt(0).all()  # the synthetic subjects really differ
    # plumbing, not quality (ANTs' accuracy is tested in test_classical.py; a 32^3 grid is too coarse for
    # its default multi-resolution affine to be reliable): ANTs really moved the images, metrics are finite
    aff = pd.read_csv(out / "metrics" / "demo" / "ants_affine" / "fold0.tsv", sep="\t")
    assert aff["tre_mm"].notna().all() and (aff["tre_mm"] != m["tre_mm"]).all()
    assert aff["runtime_s"].gt(0).all() and aff["dsc"].between(0, 1).all()
    # a second invocation has nothing to do
    r2 = run([*args, "-n"], cwd=work)
    assert r2.returncode == 0 and "Nothing to be done" in r2.stdout + r2.stderr


def test_cai2023_trains_on_its_training_only_set_and_tests_elsewhere():
    """bfh (train_only) trains every network; LiTS and SLIVER07 are registered with them; nothing runs on bfh."""
    r = run(["-n", "--nolock", "--forceall", "--configfile", "config/papers/cai2023.yaml", "--quiet", "rules",
             "--printshellcmds"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    w = "work/cai2023_full"
    assert f"--dst {w}/models/bfh/drnet_l/fold0" in out
    assert f"--model {w}/models/bfh/drnet_l/fold0/model.pt" in out and f"{w}/reg/lits/drnet_l/fold0" in out
    assert f"{w}/reg/bfh/" not in out and "results/cai2023_full/metrics/bfh/" not in out


def test_zhu2021_dag_reuses_models_across_datasets_and_methods():
    """IXI is registered with the Mindboggle-101 networks (no IXI training), the affine-only row reuses the proposed
    network's weights, and the CPU experiment's image_shape knob reaches the brain reader."""
    r = run(["-n", "--nolock", "--forceall", "--configfile", "config/papers/zhu2021.yaml", "--quiet",
             "rules", "--printshellcmds"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    w = "work/zhu2021_full"
    assert f"--out {w}/reg/ixi/zhu2021/fold0 --fold 0 --model {w}/models/mindboggle101/zhu2021/fold0/model.pt" in out
    assert f"--out {w}/reg/lpba40/zhu2021_affine/fold0 --fold 0 --model {w}/models/lpba40/zhu2021/fold0/model.pt" in out
    assert "models/ixi/" not in out and "models/lpba40/zhu2021_affine" not in out
    r = run(["-n", "--nolock", "--forceall", "--configfile", "config/papers/zhu2021_archives.yaml", "--quiet",
             "rules", "--printshellcmds"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert '"shape": [64, 64, 64]' in out


def test_ding2021_chaos_tasks_share_one_download():
    """CHAOS T1 -> CT and T2 -> CT are two prepared datasets (`raw: chaos`) from one fetched archive: one fetch job
    for it, two preprocess jobs reading data/raw/chaos, each with its own moving sequence; MMRegNet's CHAOS weights
    (lambda2 = 1) train on both CHAOS tasks and the MM-WHS row (lambda2 = 10) only on MM-WHS."""
    r = run(["-n", "--nolock", "--forceall", "--configfile", "config/papers/ding2021.yaml", "--quiet", "rules",
             "--printshellcmds"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert out.count("regbench fetch chaos ") == 1 and out.count("regbench fetch mmwhs2017 ") == 1
    assert "--raw data/raw/chaos --out data/prep/ding2021/chaos_t1" in out
    assert "--raw data/raw/chaos --out data/prep/ding2021/chaos_t2" in out
    assert '"moving": "t1dual_inphase"' in out and '"moving": "t2spir"' in out
    for d in ("chaos_t1", "chaos_t2"):
        assert f"--dst work/ding2021/models/{d}/mmregnet_chaos/fold3" in out
        assert f"work/ding2021/models/{d}/mmregnet/" not in out
    assert "--dst work/ding2021/models/mmwhs/mmregnet/fold0" in out
    assert "work/ding2021/models/mmwhs/mmregnet_chaos/" not in out


def test_variants_that_share_a_network_train_it_once():
    """he2022/studies/clip_allpairs evaluates the clipped Montgomery networks of he2022/studies/clip on all test
    pairs: in one DAG the two experiments share one train job per network (two links), and
    he2022/studies/clip_8000 continues the clipped 4000-step run (its train job resumes from it: same run folder,
    the 4000-step model among its inputs). The canonical he2022 run's 1000-step checkpoint of the same network
    (its ablation reference he2022_1000) is the first link of that chain."""
    cfg = ["--configfile", "config/config.yaml"]
    targets = [f"work/he2022/studies/{s}/models/montgomery/he2022/fold0/model.pt"
               for s in ("clip", "clip_allpairs", "clip_8000")]
    r = run(["-n", "--nolock", "--forceall", *cfg, "--printshellcmds", *targets])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(train|link_model)\s+(\d+)\s*$", out, flags=re.M))
    assert counts == {"train": "3", "link_model": "3"}, out[-3000:]  # three experiments, one network, 3 budgets
    trains = set(re.findall(r"regbench train --prep \S+ --out work/models/([0-9a-f]{12})/(steps\d+) "
                            r"--run-dir work/models/([0-9a-f]{12})", out))
    by_study = {study: src for src, study in re.findall(r"link-run --src work/models/([0-9a-f]{12}/steps\d+) --dst "
                                                         r"work/he2022/studies/(\w+)/models/montgomery/he2022/fold0", out)}
    assert by_study["clip"] == by_study["clip_allpairs"] and by_study["clip"].endswith("/steps4000")
    key = by_study["clip"].split("/")[0]
    assert by_study["clip_8000"] == f"{key}/steps8000"
    assert {b for k, b, _ in trains if k == key} == {"steps1000", "steps4000", "steps8000"}  # one run folder
