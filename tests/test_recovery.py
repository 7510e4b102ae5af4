"""Recovery after a crash, as Snakemake's docs tell users: Snakemake and its jobs are killed (SIGKILL to the whole
process group: a lost node, `kill -9`) while a network trains; `snakemake --unlock` (without --cores: it used to
fail with "Workflow requires a total number of cores to be defined") frees the working directory; a rerun with
`--rerun-incomplete` resumes the training from its last checkpoint and gives exactly the metrics of an
uninterrupted run (tests/configs/recovery.yaml)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
CONFIG = ["--configfile", "config/recovery.yaml"]
RUN = ["--cores", "2", "--resources", "gpu=1"]
TRAIN_DIR = Path("work/recovery/models/demo/voxelmorph/fold0")  # the experiment's link to the store run
METRICS = [Path(f"results/recovery/metrics/demo/{m}/fold0.tsv") for m in ("voxelmorph",)]

pytestmark = pytest.mark.slow


def _workflow(dest: Path) -> Path:
    dest.mkdir()
    for name in ("config", "workflow", "envs"):
        shutil.copytree(REPO / name, dest / name)
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    shutil.copy(REPO / "tests" / "configs" / "recovery.yaml", dest / "config" / "recovery.yaml")
    return dest


def _snakemake(args, cwd, timeout=900):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _metrics(root: Path) -> list[pd.DataFrame]:
    return [pd.read_csv(root / m, sep="\t").drop(columns=["runtime_s"]) for m in METRICS]


def test_kill_during_training_unlock_rerun_gives_the_same_metrics(tmp_path):
    clean = _workflow(tmp_path / "clean")
    r = _snakemake([*(str(m) for m in METRICS), *RUN, *CONFIG], clean)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

    crashed = _workflow(tmp_path / "crashed")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    log = open(tmp_path / "crashed.log", "w")
    proc = subprocess.Popen([SNAKEMAKE, *(str(m) for m in METRICS), *RUN, *CONFIG], cwd=crashed, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    store = crashed / "work" / "models"  # the network trains in work/models/<key>/ (regbench.store)
    deadline = time.time() + 600
    try:
        while not list(store.glob("*/checkpoint.pt")):  # training has written its first checkpoint
            assert proc.poll() is None, ("the run ended before training checkpointed:\n"
                                         + (tmp_path / "crashed.log").read_text()[-3000:])
            assert time.time() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and the training job, at once
        proc.wait()
        log.close()
    assert not list(store.glob("*/steps*/model.pt")), \
        "training finished before the kill: raise max_train_steps in tests/configs/recovery.yaml"
    assert (crashed / ".snakemake" / "locks").is_dir() and any((crashed / ".snakemake" / "locks").iterdir())

    r = _snakemake([*RUN, *CONFIG], crashed)  # a plain rerun refuses: the directory is locked
    assert r.returncode != 0 and "unlock" in (r.stdout + r.stderr)
    r = _snakemake(["--unlock", *CONFIG], crashed)  # no --cores, as Snakemake's own advice has it
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    r = _snakemake([*(str(m) for m in METRICS), *RUN, *CONFIG, "--rerun-incomplete"], crashed)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    (log_path,) = (crashed / "logs" / "models").glob("*/steps*.log")
    train_log = log_path.read_text()
    assert "resuming from step" in train_log, train_log[-2000:]

    for a, b in zip(_metrics(crashed), _metrics(clean)):
        pd.testing.assert_frame_equal(a, b)
    steps = pd.read_csv(crashed / TRAIN_DIR / "train_log.tsv", sep="\t")["step"]
    assert steps.is_monotonic_increasing and steps.iloc[-1] == 40 and steps.is_unique
