"""Experiment configs: loading, schema validation and the small queries the Snakefile and CLI make.

A top-level config is either a list of experiment files (``experiments: [config/demo.yaml, ...]``, as in
``config/config.yaml``) or one experiment inline (``config/demo.yaml``). Each experiment is validated
against ``workflow/schemas/experiment.schema.yaml``; a violation raises :class:`ConfigError` naming the file
and the key path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .datasets.registry import load_yaml, schema_path, validate_config
from .errors import ConfigError


def validate_experiment(exp: dict[str, Any], source: str) -> dict[str, Any]:
    """Validate one experiment dict and cross-check references; return a normalised deep copy.

    Normalisation: label keys become ``int``; ``device`` defaults to ``auto``; ``scale`` to no knobs.

    Raises:
        ConfigError: schema violation, or a ``report.method_order``/``report.reference``/``methods.*.datasets``
            entry that names an undeclared method or dataset.
    """
    validate_config(exp, schema_path("experiment.schema.yaml"), source)
    exp = copy.deepcopy(exp)
    exp.setdefault("device", "auto")
    exp.setdefault("registry", "config/datasets.yaml")
    exp.setdefault("scale", {})
    for name, ds in exp["datasets"].items():
        ds["labels"] = {int(k): str(v) for k, v in ds["labels"].items()}
        ds.setdefault("unit", "mm")
        ds.setdefault("seg", "seg")
        ds.setdefault("train_modality", ds["modality"])
        ds.setdefault("train_seg", ds["seg"])
        ds.setdefault("params", {})
    methods = exp["methods"]
    aux = exp.setdefault("auxiliary", {})
    for mid, m in methods.items():
        for d in m.get("datasets", []):
            if d not in exp["datasets"]:
                raise ConfigError(f"{source}: methods.{mid}.datasets: unknown dataset {d!r}")
        for key, kind in (("attention", "segmenter"), ("autoencoder", "autoencoder")):
            ref = m.get(key)
            if ref is not None and (ref not in aux or aux[ref]["kind"] != kind):
                known = sorted(a for a, v in aux.items() if v["kind"] == kind)
                raise ConfigError(f"{source}: methods.{mid}.{key}: {ref!r} is not an auxiliary {kind}; known: {known}")
        names = [t.get("name") for t in m.get("train", {}).get("losses", [])]
        if "ae" in names and not m.get("autoencoder"):
            raise ConfigError(f"{source}: methods.{mid}: loss term 'ae' needs `autoencoder: <auxiliary id>`")
    rep = exp["report"]
    for mid in rep.get("method_order", []) or []:
        if mid not in methods:
            raise ConfigError(f"{source}: report.method_order: unknown method {mid!r}; known: {sorted(methods)}")
    ref = rep.get("reference")
    if ref is not None and ref not in methods:
        raise ConfigError(f"{source}: report.reference: unknown method {ref!r}; known: {sorted(methods)}")
    return exp


def load_experiments(config: dict[str, Any], base: str | Path = ".") -> dict[str, dict[str, Any]]:
    """Return ``{experiment name: validated experiment}`` from a Snakemake top-level config.

    An inline experiment (a config with ``experiment:``) wins over an ``experiments`` list, because
    Snakemake merges a ``--configfile`` over the Snakefile's default ``config/config.yaml``.

    Raises:
        ConfigError: a listed file is missing or invalid, or two experiments share a name.
    """
    if "experiment" in config:
        # One experiment given with --configfile: Snakemake merges it over the default config/config.yaml,
        # whose `experiments` list is then not what the user asked for.
        inline = {k: v for k, v in config.items() if k != "experiments"}
        exp = validate_experiment(inline, "config")
        return {exp["experiment"]: exp}
    if "experiments" in config:
        out: dict[str, dict[str, Any]] = {}
        for entry in config["experiments"]:
            path = Path(base) / entry
            exp = validate_experiment(load_yaml(path) or {}, str(entry))
            if exp["experiment"] in out:
                raise ConfigError(f"{entry}: experiment name {exp['experiment']!r} is used twice")
            out[exp["experiment"]] = exp
        return out
    raise ConfigError("config: neither an `experiments` list nor an inline experiment (`experiment: <name>`)")


def methods_for(exp: dict[str, Any], dataset: str) -> list[str]:
    """Method ids that run on ``dataset`` (all, unless a method restricts itself with ``datasets``)."""
    return [mid for mid, m in exp["methods"].items() if dataset in m.get("datasets", exp["datasets"])]
