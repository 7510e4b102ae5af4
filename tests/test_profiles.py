"""Lint of the execution profiles (profiles/*/config.yaml): every key is an option of the pinned Snakemake or of
an installed plugin, and the full DAG builds with each profile's resources (a dry-run, which needs no cluster).
The SLURM profile also runs for real against a scheduler in tests/test_slurm.py."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PROFILES = sorted(p.parent.name for p in (REPO / "profiles").glob("*/config.yaml"))


def snakemake_options() -> set[str]:
    """Long options of `snakemake` with the installed executor/storage plugins, without the leading dashes."""
    from snakemake.cli import get_argument_parser

    parser = get_argument_parser()
    return {s[2:] for a in parser._actions for s in a.option_strings if s.startswith("--")}


def test_profiles_exist():
    assert {"local", "slurm", "kubernetes"} <= set(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_keys_are_snakemake_options(profile):
    cfg = yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text())
    unknown = sorted(set(cfg) - snakemake_options())
    assert not unknown, f"profiles/{profile}/config.yaml: not Snakemake options: {unknown}"
    rules = set(re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk")),
                           flags=re.M))
    for key in ("set-resources", "set-threads"):
        assert set(cfg.get(key, {})) <= rules, f"profiles/{profile}: {key} names a rule that does not exist"


def _dry_run(tmp_path, profile, target):
    work = tmp_path / "wf"
    work.mkdir()
    for name in ("config", "workflow", "envs", "profiles"):
        shutil.copytree(REPO / name, work / name)
    shutil.copy(REPO / "Snakefile", work / "Snakefile")
    r = subprocess.run([SNAKEMAKE, target, "--profile", f"profiles/{profile}", "-n", "--forceall",
                        "--configfile", "config/demo.yaml"], cwd=work, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    return out


def _job_resources(out: str, rule: str) -> str:
    m = re.search(rf"^(?:localrule|rule) {rule}:\n(?:    .*\n)*?    resources: (.*)$", out, flags=re.M)
    assert m, f"no {rule} job in the dry-run"
    return m.group(1)


def test_slurm_profile_dry_run_asks_a_gpu_for_training(tmp_path):
    out = _dry_run(tmp_path, "slurm", "work/demo/models/demo/voxelmorph/fold0/model.pt")
    res = _job_resources(out, "train")
    for item in ("gpu=1", "mem_mb=32000", "runtime=1440", "slurm_partition=gpu"):
        assert item in res, res


def test_kubernetes_profile_dry_run_asks_an_nvidia_gpu_for_training(tmp_path):
    out = _dry_run(tmp_path, "kubernetes", "work/demo/models/demo/voxelmorph/fold0/model.pt")
    res = _job_resources(out, "train")
    for item in ("gpu=1", "gpu_manufacturer=nvidia", "mem_mb=32000"):
        assert item in res, res
