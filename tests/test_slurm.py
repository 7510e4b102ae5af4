"""The SLURM profile against a real scheduler: a single-node SLURM 22.05 cluster started on this machine
(tests/slurm/cluster.sh: Debian's slurmctld/slurmd/slurmdbd, munge, MariaDB for accounting), a slice of the
pipeline (tests/configs/slurm.yaml: fetch, preprocess, two classical methods registered and evaluated, a
10-step training) run through ``snakemake --profile profiles/slurm``; the scheduler's own records (``sacct``
with slurmdbd, ``scontrol show job``) must list every job with the resources the profile asks, the training
job on the ``gpu`` partition with one GPU, and the outputs must equal those of a local run of the same slice.

Skips only where it cannot run: not root, or the packages are missing and apt-get is not there. In CI it runs
(CI is root with apt-get); a failing install there is a failure, not a skip.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
CONFIG = REPO / "tests" / "configs" / "slurm.yaml"

CLASSICAL = ("before", "ants_affine")
TARGETS = [f"results/slurm/metrics/demo/{m}/fold0.tsv" for m in CLASSICAL] + [
    "work/slurm/models/demo/voxelmorph/fold0/model.pt"]

pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root (it installs Debian's slurm-wlm/munge packages and starts slurmctld, slurmd, slurmdbd)"
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is not available to install it"
    return None


def _copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("config", "workflow", "envs", "profiles"):
        shutil.copytree(REPO / name, dest / name)
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    shutil.copy(CONFIG, dest / "config" / "slurm.yaml")
    return dest


@pytest.fixture(scope="module")
def cluster():
    """Start the test cluster in a fresh folder (world-traversable: MariaDB runs as user mysql) and stop it after."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    r = subprocess.run(["bash", str(CLUSTER), "install"], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.fail(f"tests/slurm/cluster.sh install failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    state = Path(tempfile.mkdtemp(prefix="regbench-slurm-", dir="/tmp"))
    r = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=300)
    try:
        assert r.returncode == 0, f"cluster did not start:\n{r.stdout[-3000:]}{r.stderr[-3000:]}" + "".join(
            f"\n--- {p}\n{p.read_text()[-2000:]}" for p in sorted((state / "log").glob("*.log")))
        env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"), USER="root",
                   PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True, text=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def _sacct(env, start: str) -> pd.DataFrame:
    fields = ["JobIDRaw", "State", "Partition", "Comment", "ReqTRES", "TimelimitRaw", "ReqMem", "NCPUS"]
    r = subprocess.run(["sacct", "-X", "-P", "-n", "-a", "-S", start, "-E", "now", "-o", ",".join(fields)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split("|") for line in r.stdout.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=fields)


def _comparable(tsv: Path) -> pd.DataFrame:
    """A metrics table without the columns that legitimately differ between runs (wall times)."""
    return pd.read_csv(tsv, sep="\t").drop(columns=["runtime_s"], errors="ignore")


def test_slurm_profile_runs_the_pipeline_through_the_scheduler(cluster, tmp_path):
    env = cluster
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    run_dir = _copy_workflow(tmp_path / "slurm")
    # the profile as users run it; only the plugin's polling is made faster (its default waits 40 s before the
    # first status check) and training threads are kept to this machine's 2 cores, so both runs use the same
    # thread count and agree bit for bit
    args = [SNAKEMAKE, *TARGETS, "--profile", "profiles/slurm", "--configfile", "config/slurm.yaml",
            "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
            "--slurm-keep-successful-logs", "--set-threads", "train=2"]
    r = subprocess.run(args, cwd=run_dir, env=env, capture_output=True, text=True, timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "has been submitted with SLURM jobid" in out

    # the scheduler's records: every job of the slice, completed, with the profile's resources
    jobs = _sacct(env, start)
    jobs["rule"] = jobs["Comment"].str.extract(r"^rule_([a-z_]+?)(?:_wildcards_|$)")[0]
    assert (jobs["State"] == "COMPLETED").all(), jobs.to_string()
    counts = jobs["rule"].value_counts().to_dict()
    assert counts == {"fetch": 1, "preprocess": 1, "preprocess_train": 1, "register": 2, "evaluate": 2, "train": 1}, \
        jobs.to_string()
    train = jobs[jobs["rule"] == "train"].iloc[0]
    assert train["Partition"] == "gpu" and "gres/gpu=1" in train["ReqTRES"], train.to_dict()
    assert train["TimelimitRaw"] == "1440" and train["ReqMem"] == "32000M" and train["NCPUS"] == "2"
    for _, job in jobs[jobs["rule"] != "train"].iterrows():
        assert job["Partition"] == "main" and "gres/gpu" not in job["ReqTRES"], job.to_dict()
        assert job["ReqMem"] == "16000M"
        assert job["TimelimitRaw"] == ("240" if job["rule"] == "register" else "120"), job.to_dict()
    # the submitted training job's own options, as slurmctld holds them (MinJobAge=600 keeps finished jobs)
    show = subprocess.run(["scontrol", "show", "job", train["JobIDRaw"]], capture_output=True, text=True,
                          env=env, timeout=60).stdout
    assert "TresPerJob=gres:gpu:1" in show and "Partition=gpu" in show, show
    # inside the allocation the job saw its GPU (CUDA_VISIBLE_DEVICES=0) and, with no CUDA here, trained on CPU
    info = (run_dir / "work/slurm/models/demo/voxelmorph/fold0/train_info.json").read_text()
    assert '"device": "cpu"' in info

    # the same slice locally: identical preprocessing, registrations' metrics and training log
    local_dir = _copy_workflow(tmp_path / "local")
    r = subprocess.run([SNAKEMAKE, *TARGETS, "--cores", "2", "--resources", "gpu=1", "--configfile",
                        "config/slurm.yaml"], cwd=local_dir, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    prep = Path("data/prep/slurm/demo")
    for name in ("cases.tsv", "pairs.tsv"):
        assert (run_dir / prep / name).read_bytes() == (local_dir / prep / name).read_bytes(), name
    for nii in sorted((local_dir / prep).rglob("*.nii.gz")):
        rel = nii.relative_to(local_dir)
        assert np.array_equal(nib.load(run_dir / rel).get_fdata(), nib.load(nii).get_fdata()), rel
    for m in CLASSICAL:
        rel = Path(f"results/slurm/metrics/demo/{m}/fold0.tsv")
        pd.testing.assert_frame_equal(_comparable(run_dir / rel), _comparable(local_dir / rel))
    log = Path("work/slurm/models/demo/voxelmorph/fold0/train_log.tsv")
    a, b = (pd.read_csv(d / log, sep="\t") for d in (run_dir, local_dir))
    loss_cols = [c for c in a.columns if "loss" in c]
    assert loss_cols and len(a) == len(b)
    pd.testing.assert_frame_equal(a[loss_cols], b[loss_cols])
