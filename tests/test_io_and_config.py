"""Bad input gets a clear error naming the file or key: NIfTI with NaNs or zero spacing, grid mismatch,
experiment configs that fail the schema."""

import copy

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from regbench.config import load_experiments, resolve_extends, validate_experiment
from regbench.data import subsample_pairs
from regbench.errors import ConfigError, DataError, ShapeMismatchError
from regbench.io import check_same_grid, load_ddf, load_image, save_ddf, save_image

from conftest import REPO

DEMO = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def test_nan_image_is_rejected_with_its_path(tmp_path):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), p)
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 1 voxels are NaN"):
        load_image(p)
    assert np.isnan(load_image(p, allow_nan=True).array).sum() == 1


def test_zero_spacing_is_rejected(tmp_path):
    p = tmp_path / "flat.nii.gz"
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None)
    img.header["pixdim"][2] = 0.0  # no qform/sform: the spacing comes from pixdim
    nib.save(img, p)
    with pytest.raises(DataError, match=r"flat\.nii\.gz: voxel spacing .* zero"):
        load_image(p)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "absent.nii.gz")
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="corrupt.nii.gz: cannot read"):
        load_image(bad)


def test_grid_mismatch(tmp_path):
    a = save_image(tmp_path / "a.nii.gz", np.zeros((8, 8, 8), np.float32), np.eye(4))
    b = save_image(tmp_path / "b.nii.gz", np.zeros((8, 8, 9), np.float32), np.eye(4))
    c = save_image(tmp_path / "c.nii.gz", np.zeros((8, 8, 8), np.float32), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ShapeMismatchError, match="shape mismatch"):
        check_same_grid(load_image(a), load_image(b))
    with pytest.raises(ShapeMismatchError, match="spacing mismatch"):
        check_same_grid(load_image(a), load_image(c))


@pytest.mark.parametrize("shape", [(6, 7, 8), (9, 10)])
def test_ddf_roundtrip(tmp_path, shape):
    ddf = np.random.default_rng(0).normal(size=(len(shape), *shape)).astype(np.float32)
    p = save_ddf(tmp_path / "f.nii.gz", ddf, np.eye(4))
    assert np.array_equal(load_ddf(p), ddf)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    from regbench.utils import atomic_path

    target = tmp_path / "out.tsv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tsv"]


def test_demo_and_full_configs_validate():
    assert list(load_experiments(DEMO)) == ["demo"]
    exps = load_experiments(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), base=REPO)
    assert "demo" in exps and exps["demo"]["datasets"]["demo"]["labels"][2] == "GM"


def test_train_only_datasets():
    """A training-only dataset (Cai et al.'s RCN liver scans) must serve another dataset's models_from; the
    evaluated datasets are the others."""
    from regbench.config import evaluated_datasets

    cfg = copy.deepcopy(DEMO)
    cfg["datasets"]["other"] = {**copy.deepcopy(cfg["datasets"]["demo"]), "models_from": "demo"}
    cfg["datasets"]["demo"]["train_only"] = True
    cfg["methods"] = {k: v for k, v in cfg["methods"].items() if "datasets" not in v}
    exp = validate_experiment(cfg, "t.yaml", REPO)
    assert evaluated_datasets(exp) == ["other"]
    alone = copy.deepcopy(DEMO)
    alone["datasets"]["demo"]["train_only"] = True  # serves nobody
    with pytest.raises(ConfigError, match=r"datasets\.demo\.train_only"):
        validate_experiment(alone, "t.yaml", REPO)


def test_nested_experiment_names(tmp_path):
    """An experiment name is its path under results/ (and work/, data/prep/, logs/): a study or demo nests under
    its paper (`demo/studies/short`), never under a folder the outer experiment writes itself."""
    def load(*names):
        for i, n in enumerate(names):
            _write(tmp_path / "config" / f"e{i}.yaml", {**copy.deepcopy(DEMO), "experiment": n})
        return load_experiments({"experiments": [f"config/e{i}.yaml" for i in range(len(names))]}, base=tmp_path)

    assert sorted(load("demo", "demo/studies/short")) == ["demo", "demo/studies/short"]
    for clash in ("demo/metrics", "demo/models/x", "demo/demo"):  # results/demo/metrics, work/demo/models, a dataset
        with pytest.raises(ConfigError, match=rf"{clash!r} is nested in experiment 'demo'"):
            load("demo", clash)
    for bad in ("demo/", "/demo", "demo//x", "../demo", "Demo/x"):
        with pytest.raises(ConfigError, match="experiment"):
            load(bad)


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["methods"]["voxelmorph"]["train"].pop("lr"), "methods.voxelmorph.train"),
        (lambda c: c["methods"]["syn_cc"].update(transform="ants_synn"), "methods.syn_cc.transform"),
        (lambda c: c["datasets"]["demo"].update(folds="0"), "datasets.demo.folds"),
        (lambda c: c.update(seed=-1), "seed"),
        (lambda c: c["methods"]["voxelmorph"]["train"]["losses"].append({"name": "nmi"}),
         "methods.voxelmorph.train.losses[2].name"),
    ],
)
def test_schema_failure_names_the_key(mutate, key):
    cfg = copy.deepcopy(DEMO)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_experiment(cfg, "config/demo.yaml")
    assert f"config/demo.yaml: {key}" in str(err.value)


def test_cross_reference_errors():
    cfg = copy.deepcopy(DEMO)
    cfg["report"]["reference"] = "voxelmorf"
    with pytest.raises(ConfigError, match="report.reference: unknown method 'voxelmorf'"):
        validate_experiment(cfg, "x.yaml")


def test_method_pairs_cap_names_a_known_method():
    cfg = copy.deepcopy(DEMO)
    cfg["scale"]["method_max_test_pairs"] = {"syn_cx": 3}
    with pytest.raises(ConfigError, match="scale.method_max_test_pairs: unknown method 'syn_cx'"):
        validate_experiment(cfg, "x.yaml")


def test_method_pairs_cap_is_a_subset_of_the_experiment_selection():
    pairs = pd.DataFrame({"fixed": [f"f{i}" for i in range(200)], "moving": [f"m{i}" for i in range(200)]})
    first = subsample_pairs(pairs, 90, 3)
    capped = subsample_pairs(first, 30, 3)
    assert len(first) == 90 and len(capped) == 30
    assert set(capped["fixed"]) <= set(first["fixed"])
    assert subsample_pairs(first, None, 3).equals(first)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj, sort_keys=False))


def test_extends_deep_merges_and_drops(tmp_path):
    base = copy.deepcopy(DEMO)
    base["methods"]["voxelmorph"]["attention"] = "kept"  # a non-schema key, to see merging below train:
    _write(tmp_path / "config" / "base.yaml", base)
    child = {"extends": "config/base.yaml", "experiment": "variant", "scale": {"max_train_steps": 7},
             "methods": {"voxelmorph": {"train": {"steps": 99}, "attention": None}},
             "drop": ["methods.syn_cc", "report.qualitative_pair"]}
    resolved = resolve_extends(child, "variant.yaml", tmp_path)
    vm, vm0 = resolved["methods"]["voxelmorph"], base["methods"]["voxelmorph"]
    assert resolved["experiment"] == "variant" and resolved["scale"]["max_train_steps"] == 7
    assert vm["train"]["steps"] == 99 and vm["train"]["lr"] == vm0["train"]["lr"]       # merged, not replaced
    assert vm["train"]["losses"] == vm0["train"]["losses"]
    assert vm["attention"] is None                                                        # null replaces
    assert "syn_cc" not in resolved["methods"] and "syn_cc" in base["methods"]            # base untouched
    assert "qualitative_pair" not in resolved["report"] and "extends" not in resolved and "drop" not in resolved
    assert list(resolved["methods"]) == [m for m in base["methods"] if m != "syn_cc"]     # base order kept


def test_extends_report_tables_inherit_the_paper_values_of_their_namesake(tmp_path):
    pv = {"voxelmorph": {"dsc": "0.80 ± 0.01"}}
    base = {"experiment": "b", "report": {"tables": [{"name": "table1", "paper_values": pv},
                                                     {"name": "table2", "paper_values": {"x": {"dsc": 1}}}]}}
    _write(tmp_path / "config" / "base.yaml", base)
    child = {"extends": "config/base.yaml", "experiment": "v",
             "report": {"tables": [{"name": "table1", "methods": ["voxelmorph"]},
                                   {"name": "table2", "paper_values": {}}, {"name": "table9"}]}}
    tables = resolve_extends(child, "v.yaml", tmp_path)["report"]["tables"]
    assert tables[0] == {"name": "table1", "methods": ["voxelmorph"], "paper_values": pv}   # inherited
    assert tables[1]["paper_values"] == {}                                               # its own kept
    assert "paper_values" not in tables[2]                                                # no namesake
    tables[0]["paper_values"]["voxelmorph"]["dsc"] = "changed"
    assert base["report"]["tables"][0]["paper_values"] == pv                              # a copy


def test_zhu2021_archives_tables_show_the_papers_values():
    exps = load_experiments(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), base=REPO)
    full = {t["name"]: t for t in exps["zhu2021_full"]["report"]["tables"]}
    for t in exps["zhu2021"]["report"]["tables"]:
        assert t["paper_values"] == full[t["name"]]["paper_values"], t["name"]


@pytest.mark.parametrize("child, match", [
    ({"extends": "config/missing.yaml", "experiment": "v"}, r"v\.yaml: extends: 'config/missing\.yaml': no such file"),
    ({"extends": "config/base.yaml"}, r"v\.yaml: extends 'config/base\.yaml' but sets no `experiment:`"),
    ({"extends": "config/base.yaml", "experiment": "v", "drop": ["methods.nope"]},
     r"v\.yaml: drop: 'methods\.nope': no key 'methods\.nope' to drop \(after extending 'config/base\.yaml'\)"),
    ({"extends": "config/base.yaml", "experiment": "v", "drop": "methods"}, r"drop: must be a list"),
])
def test_extends_errors_name_the_file_and_key(tmp_path, child, match):
    _write(tmp_path / "config" / "base.yaml", DEMO)
    with pytest.raises(ConfigError, match=match):
        resolve_extends(child, "v.yaml", tmp_path)


def test_extends_cycle_is_reported(tmp_path):
    _write(tmp_path / "config" / "a.yaml", {"extends": "config/b.yaml", "experiment": "a"})
    _write(tmp_path / "config" / "b.yaml", {"extends": "config/a.yaml", "experiment": "b"})
    with pytest.raises(ConfigError, match=r"circular `extends`: .*config/a\.yaml -> config/b\.yaml -> config/a\.yaml"):
        load_experiments({"experiments": ["config/a.yaml"]}, base=tmp_path)


def test_he2022_variants_differ_from_their_base_only_where_they_say():
    """The chest X-ray budget variants extend he2022/studies/steps_1000: same data, auxiliary networks and losses."""
    exps = load_experiments(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), base=REPO)
    long, k4, clip, clip8k = (exps[f"he2022/studies/{n}"] for n in ("steps_1000", "steps_4000", "clip", "clip_8000"))
    for e in (k4, clip):
        assert e["datasets"] == long["datasets"] and e["auxiliary"] == long["auxiliary"]
        for m in ("acregnet", "he2022"):
            assert e["methods"][m]["train"]["losses"] == long["methods"][m]["train"]["losses"]
            assert e["methods"][m]["train"]["steps"] == 4000
    assert "clip_grad_norm" not in k4["methods"]["he2022"]["train"]
    assert clip["methods"]["he2022"]["train"]["clip_grad_norm"] == 1.0 and "notes" not in clip["report"]
    assert list(clip8k["datasets"]) == ["montgomery"] and list(clip8k["methods"]) == ["before", "he2022"]
    assert {**clip8k["methods"]["he2022"]["train"], "steps": 4000} == clip["methods"]["he2022"]["train"]
