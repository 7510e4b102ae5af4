"""Content-addressed trained networks (regbench.store): what enters a network's address and what does not, the
chain of step budgets of one network, shared run folders in the trainer, and the experiment's links."""

import copy
import json

import pandas as pd
import pytest
import torch

from regbench import engine, store
from regbench.config import load_experiments
from regbench.train import train

METHOD = {
    "name": "VoxelMorph", "kind": "learned", "model": "voxelmorph",
    "model_params": {"variant": "vm1"},
    "train": {"steps": 6, "lr": 1e-3, "batch_size": 2, "checkpoint_every": 3,
              "losses": [{"name": "lncc", "window": 5}, {"name": "diffusion", "weight": 0.5}]},
}


@pytest.fixture(scope="module")
def demo():
    return load_experiments({"experiments": ["config/demo.yaml"]})["demo"]


def _variant(e, name, edit):
    e = copy.deepcopy(e)
    edit(e)
    e["experiment"] = name
    return e


def _address(e, method="voxelmorph"):
    run = store.RunStore({e["experiment"]: e}).model(e["experiment"], "demo", method, 0)
    return run.key, run.budget


def test_the_trainer_resumes_on_the_store_spec():
    """The checkpoint's resume spec is the store's weight spec: what addresses a network is what resumes it."""
    block = {"name": "VM", "model": "voxelmorph", "datasets": ["demo"], "inference_size": [32, 32],
             "train": {"steps": 500, "lr": 1e-3, "checkpoint_every": 50, "losses": [{"name": "mse"}]}}
    _, steps, resume = engine.training_schedule(block, 200)
    assert steps == 200 and resume == store.weight_spec(block)
    assert resume == {"model": "voxelmorph", "train": {"lr": 1e-3, "losses": [{"name": "mse"}]}}


@pytest.mark.parametrize("edit", [
    lambda e: e["methods"]["voxelmorph"].update(name="VM (renamed)"),
    lambda e: e["methods"]["voxelmorph"].update(inference_size=[32, 32, 32]),
    lambda e: e.update(device="cpu"),
    lambda e: e["scale"].update(max_test_pairs=3),
    lambda e: e["datasets"]["demo"]["params"].update(test_pairs="random3"),
    lambda e: e["methods"]["voxelmorph"]["train"].update(checkpoint_every=7),
    lambda e: e.update(report={**e.get("report", {}), "title": "another title"}),
], ids=["name", "inference_size", "device", "max_test_pairs", "test_pairs", "checkpoint_every", "report"])
def test_what_does_not_change_the_weights_keeps_the_address(demo, edit):
    assert _address(_variant(demo, "variant", edit)) == _address(demo)


@pytest.mark.parametrize("edit", [
    lambda e: e["methods"]["voxelmorph"]["train"].update(lr=5e-4),
    lambda e: e["methods"]["voxelmorph"]["train"].update(clip_grad_norm=1.0),
    lambda e: e.update(seed=e["seed"] + 1),
    lambda e: e["datasets"]["demo"]["params"].update(n_subjects=e["datasets"]["demo"]["params"].get("n_subjects", 10) + 1),
    lambda e: e["datasets"]["demo"].update(labels=dict(list(e["datasets"]["demo"]["labels"].items())[:1])),
], ids=["lr", "clip", "seed", "prep", "labels"])
def test_what_changes_the_weights_changes_the_key(demo, edit):
    key, _ = _address(_variant(demo, "variant", edit))
    assert key != _address(demo)[0]


def test_step_budgets_of_one_network_share_a_key_and_chain(demo):
    short = _variant(demo, "short", lambda e: e["scale"].update(max_train_steps=10))
    long = _variant(demo, "long", lambda e: e["scale"].update(max_train_steps=30))
    s = store.RunStore({"short": short, "long": long, "demo": demo})
    a, b = s.model("short", "demo", "voxelmorph", 0), s.model("long", "demo", "voxelmorph", 0)
    assert a.key == b.key and (a.budget, b.budget) == ("steps10", "steps30")
    assert a.run_dir == b.run_dir == f"work/models/{a.key}" and b.model == f"work/models/{a.key}/steps30/model.pt"
    assert s.previous(b) is a and s.previous(a) is None
    full = s.model("demo", "demo", "voxelmorph", 0)  # the demo's own budget, above both
    assert s.previous(full) is b


def test_one_network_used_by_two_experiments_is_owned_by_the_first(demo):
    other = _variant(demo, "a_first", lambda e: e["methods"]["voxelmorph"].update(name="renamed"))
    s = store.RunStore({"demo": demo, "a_first": other})
    run = s.model("demo", "demo", "voxelmorph", 0)
    assert run is s.model("a_first", "demo", "voxelmorph", 0)
    assert run.owner == ("a_first", "demo", "voxelmorph", 0) and run.spec["method"]["name"] == "renamed"
    assert s.prep_dir(run).startswith("data/prep_train/") and len(run.users) == 2


def test_training_data_is_addressed_by_its_spec_not_by_the_experiment():
    """Two experiments that differ only in their test pairs, each loaded alone (two Snakemake invocations),
    train the same network on the same data/prep_train/<pid> folder, prepared without the test-only parameters;
    another training-relevant reader parameter gives another folder."""
    clip = load_experiments({"experiments": ["config/papers/he2022/studies/clip.yaml"]})
    allp = load_experiments({"experiments": ["config/papers/he2022/studies/clip_allpairs.yaml"]})
    assert clip["he2022/studies/clip"]["datasets"]["montgomery"]["params"]["test_pairs"] == "random200"
    assert allp["he2022/studies/clip_allpairs"]["datasets"]["montgomery"]["params"]["test_pairs"] == "all"
    a = store.RunStore(clip)
    b = store.RunStore(allp)
    ra = a.model("he2022/studies/clip", "montgomery", "he2022", 0)
    rb = b.model("he2022/studies/clip_allpairs", "montgomery", "he2022", 0)
    assert ra.key == rb.key and a.prep_dir(ra) == b.prep_dir(rb)
    pid = a.prep_dir(ra).rsplit("/", 1)[1]
    assert a.train_prep(pid) == {"raw": "montgomery", "spec": {"dataset": "montgomery", "params": {},
                                                                "preprocess": "chestxray", "seed": 0}}
    other = copy.deepcopy(clip)
    other["he2022/studies/clip"]["datasets"]["montgomery"]["params"]["max_cases"] = 20
    c = store.RunStore(other)
    rc = c.model("he2022/studies/clip", "montgomery", "he2022", 0)
    assert c.prep_dir(rc) != a.prep_dir(ra) and rc.key != ra.key
    with pytest.raises(KeyError):
        a.train_prep("0" * 12)


def test_he2022_frozen_networks_enter_the_address():
    """He et al.'s registration networks read a segmenter and an auto-encoder: their store paths are training
    inputs, and a network trained with other auxiliary networks has another address."""
    exps = load_experiments({"experiments": ["config/papers/he2022/studies/steps_300.yaml",
                                             "config/papers/he2022/studies/steps_1000.yaml"]})
    s = store.RunStore(exps)
    a = s.model("he2022/studies/steps_300", "jsrt", "he2022", 0)
    assert set(a.inputs) == {"attention", "component_autoencoder"}
    assert all(p.startswith("work/aux/") and p.endswith("/steps300/model.pt") for p in a.inputs.values())
    b = s.model("he2022/studies/steps_1000", "jsrt", "he2022", 0)
    assert all(p.endswith("/steps1000/model.pt") for p in b.inputs.values()) and a.key != b.key


def test_shared_run_folder_resumes_longer_budgets_and_isolates_shorter_ones(tiny_prepared, tmp_path):
    """Budget 3 then 6 in one run folder: the 6-step network continues the 3-step run and equals a straight
    6-step training; a 4-step budget asked afterwards (the run folder is at step 6) trains afresh in its own
    folder and equals a straight 4-step training; each budget's train_log.tsv holds its own steps."""
    spec = dict(prep_dir=tiny_prepared, method=METHOD, fold=0, seed=3, modality="img", labels=[1, 2], device="cpu")
    run = tmp_path / "store" / "k"
    m3 = train(out_dir=run / "steps3", run_dir=run, max_steps=3, **spec)
    m6 = train(out_dir=run / "steps6", run_dir=run, **spec)
    m4 = train(out_dir=run / "steps4", run_dir=run, max_steps=4, **spec)
    assert pd.read_csv(run / "steps3" / "train_log.tsv", sep="\t")["step"].tolist() == [1, 2, 3]
    assert pd.read_csv(run / "steps6" / "train_log.tsv", sep="\t")["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert pd.read_csv(run / "steps4" / "train_log.tsv", sep="\t")["step"].tolist() == [1, 2, 3, 4]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 6  # left as it was
    assert (run / "steps4" / "run" / "checkpoint.pt").exists()
    assert json.loads((run / "steps6" / "train_info.json").read_text())["run_dir"] == str(run)
    for got, steps in ((m6, 6), (m4, 4), (m3, 3)):
        ref = train(out_dir=tmp_path / f"straight{steps}", max_steps=steps, **spec)
        wa, wb = torch.load(ref, weights_only=False)["model"], torch.load(got, weights_only=False)["model"]
        assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa), steps


def test_link_run_names_the_network_as_the_experiment_does(tiny_prepared, tmp_path):
    src = tmp_path / "work" / "models" / "k" / "steps3"
    train(out_dir=src, run_dir=src.parent, max_steps=3, prep_dir=tiny_prepared, method=METHOD, fold=0, seed=0,
          modality="img", labels=[1, 2], device="cpu")
    dst = tmp_path / "work" / "exp" / "models" / "demo" / "vm" / "fold0"
    store.link_run(src, dst, "VM (this experiment)")
    assert (dst / "model.pt").stat().st_ino == (src / "model.pt").stat().st_ino  # a hard link, not a copy
    info = json.loads((dst / "train_info.json").read_text())
    assert info["method"] == "VM (this experiment)" and info["run"] == str(src)
    assert json.loads((src / "train_info.json").read_text())["method"] == "VoxelMorph"  # the store is untouched
    store.link_run(src, dst, "again")  # relinking replaces
    assert json.loads((dst / "train_info.json").read_text())["method"] == "again"
    with pytest.raises(FileNotFoundError, match="no trained network"):
        store.link_run(tmp_path / "nowhere", dst)


def test_paths_of_lists_an_experiments_store_folders(demo):
    """make clean-demo removes these: the run folder, logs, benchmarks and training data of each network the
    experiment uses (a checkpoint left in the store would otherwise be resumed by the next run)."""
    other = _variant(demo, "other", lambda e: e["methods"]["voxelmorph"]["train"].update(lr=5e-4))
    s = store.RunStore({"demo": demo, "other": other})
    run = s.model("demo", "demo", "voxelmorph", 0)
    paths = s.paths_of("demo")
    assert paths == sorted({run.run_dir, f"logs/models/{run.key}", f"benchmarks/models/{run.key}", s.prep_dir(run)})
    assert s.model("other", "demo", "voxelmorph", 0).run_dir not in paths
    with pytest.raises(KeyError, match="not loaded"):
        s.paths_of("nope")
