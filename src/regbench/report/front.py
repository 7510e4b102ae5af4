"""The benchmark's front page: ``results/README.md``, one row per table and figure of every paper.

The catalogue of what each paper prints is data (``config/results_index.yaml``): per paper its title, the
full-protocol config, the proposed method and the list of its tables and figures, each with the results
path it is rendered to (``results/<paper>/<name>``, a demo-scale run under ``results/<paper>/demo/``). For
each item :func:`write_results_index` finds the rendered file, reads the ``provenance.json`` beside it and
writes:

* the path (``.md`` for a table, ``.png`` for a figure);
* the protocol it ran: ``paper's`` when the run's ``scale`` holds no knob, ``scaled: k=v, ...`` with the
  knobs otherwise, ``demo`` for a run under ``demo/``, and ``not yet run`` when no file is there; a run
  rendered with rows or datasets missing adds ``partial, not yet run: ...`` (``not_yet_run`` in its
  ``provenance.json``, :func:`regbench.report.experiment.missing_runs`);
* the headline gap to the paper for tables that carry paper values: the proposed method's ``mean`` minus
  the paper's mean of the item's headline metric (DSC by default), per dataset, averaged over labels for the
  per-label tables (Zhu et al. Tables I-II), read from the table's numeric ``.csv`` (wide layout
  ``<metric>_mean`` / ``<metric>_paper_mean`` of the main tables, or the long layout ``metric``, ``mean``,
  ``paper_mean`` of the extra tables; see :mod:`regbench.report.tables`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..datasets.registry import load_yaml
from ..errors import ConfigError
from ..utils import atomic_path

#: scale keys that are documentation, not knobs
_NOT_KNOBS = ("note",)


def load_catalogue(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{paper id: entry}`` of the results catalogue (``config/results_index.yaml``).

    Raises:
        ConfigError: the file is missing, has no ``papers`` mapping, or an item has no ``name``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: results catalogue not found")
    papers = (load_yaml(path) or {}).get("papers")
    if not isinstance(papers, dict) or not papers:
        raise ConfigError(f"{path}: needs a non-empty `papers:` mapping")
    for pid, entry in papers.items():
        items = entry.get("items") if isinstance(entry, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("name") for i in items):
            raise ConfigError(f"{path}: papers.{pid}.items must be a list of mappings with a `name`")
    return papers


def _find(results: Path, paper: str, item: dict[str, Any]) -> Path | None:
    """The rendered file of an item: its ``file`` (or ``<paper>/<name>``, then ``<paper>/demo/<name>``)."""
    stems = [item["file"]] if item.get("file") else [f"{paper}/{item['name']}", f"{paper}/demo/{item['name']}"]
    for stem in stems:
        for ext in (".md", ".png"):
            p = results / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def protocol_of(found: Path, results: Path) -> str:
    """``paper's``, ``scaled: k=v, ...`` or ``demo (...)`` from the ``provenance.json`` beside ``found``."""
    prov = found.parent / "provenance.json"
    scale: dict[str, Any] = {}
    not_run: list[str] = []
    if prov.is_file():
        meta = json.loads(prov.read_text(encoding="utf-8"))
        scale, not_run = meta.get("scale") or {}, meta.get("not_yet_run") or []
    knobs = {k: v for k, v in scale.items() if k not in _NOT_KNOBS and v not in (None, {}, [])}
    text = ", ".join(f"{k}={_short(v)}" for k, v in knobs.items())
    partial = f"; partial, not yet run: {'; '.join(not_run)}" if not_run else ""
    if "demo" in found.relative_to(results).parts[:-1]:
        return (f"demo ({text})" if text else "demo") + partial
    if not prov.is_file():
        return "unknown (no provenance.json)"
    return (f"scaled: {text}" if text else "paper's") + partial


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "x".join(str(x) for x in v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def headline_gap(csv: Path, method: str, metric: str) -> str:
    """``"<dataset> ±d, ..."``: ours minus the paper's mean of ``metric`` for ``method``, per dataset.

    Reads the numeric table ``csv`` (comment lines ``#``); ``""`` when it has no paper value for them.
    """
    if not csv.is_file():
        return ""
    df = pd.read_csv(csv, comment="#")
    if "method" not in df.columns:
        return ""
    df = df[df["method"].astype(str) == method]
    if "metric" in df.columns and "paper_mean" in df.columns:           # long layout
        df = df[df["metric"].astype(str).str.startswith(metric)]
        ours, paper = df["mean"], df["paper_mean"]
    elif f"{metric}_paper_mean" in df.columns:                          # wide layout
        ours, paper = df[f"{metric}_mean"], df[f"{metric}_paper_mean"]
    else:
        return ""
    gap = pd.DataFrame({"d": df["dataset"] if "dataset" in df.columns else "", "gap": pd.to_numeric(ours, errors="coerce")
                        - pd.to_numeric(paper, errors="coerce"),
                        "scale": df["scale"] if "scale" in df.columns else 1.0}).dropna(subset=["gap"])
    if gap.empty:
        return ""
    parts = []
    for d, g in gap.groupby("d", sort=False):
        unit = " pp" if float(g["scale"].iloc[0]) == 100.0 else ""
        value = float(g["gap"].mean())
        parts.append(f"{d} {value:+.3f}{unit}".strip() if not math.isnan(value) else "")
    return ", ".join(p for p in parts if p)


def results_index(catalogue: dict[str, dict[str, Any]], results: Path) -> pd.DataFrame:
    """One row per catalogued table or figure: paper, item, what, path, protocol, headline gap."""
    rows = []
    for pid, entry in catalogue.items():
        for item in entry["items"]:
            found = _find(results, pid, item)
            metric = item.get("headline", entry.get("headline", "dsc"))
            method = item.get("proposed", entry.get("proposed"))
            gap = ""
            protocol = protocol_of(found, results) if found else "not yet run"
            if found is not None and found.suffix == ".md" and metric and method:
                gap = headline_gap(found.with_suffix(".csv"), method, metric)
                gap = f"{metric} {gap}" if gap else ""
                if gap and protocol.startswith("demo"):  # the embedded demo is not the paper's data
                    gap += " (demo data: not comparable)"
            rows.append({
                "Paper": pid, "Item": item["name"], "What": item.get("what", ""),
                "Path": str(found.relative_to(results)) if found else "—",
                "Protocol": protocol,
                "Ours − paper (proposed method)": gap or "—",
            })
    return pd.DataFrame(rows)


def write_results_index(catalogue_path: str | Path, results: str | Path = "results",
                        config_root: str | Path = ".") -> Path:
    """Write ``<results>/README.md`` from the catalogue and the rendered files; return its path.

    ``config_root``: what the catalogue's ``config`` paths are relative to (a missing one is marked).

    Raises:
        ConfigError: a bad catalogue (:func:`load_catalogue`).
    """
    results, config_root = Path(results), Path(config_root)
    catalogue = load_catalogue(catalogue_path)
    table = results_index(catalogue, results)
    lines = [
        "# regbench results: every table and figure of the five papers",
        "",
        "Generated by `make report` (`regbench results-index`) from `config/results_index.yaml` and the rendered "
        "files; do not edit by hand. *Protocol* is the paper's when the run changed no scale knob, else the knobs "
        "(a scaled-down or demo run); *ours − paper* is the proposed method's headline metric minus the paper's "
        "mean, per dataset (averaged over labels for per-label tables; `pp` = percentage points); for a demo run it "
        "compares other data (the embedded synthetic brains) and is marked so.",
        "",
    ]
    for pid, entry in catalogue.items():
        sub = table[table["Paper"] == pid].drop(columns=["Paper"])
        done = int((sub["Path"] != "—").sum())
        cfg = entry.get("config")
        cfg_text = f"`{cfg}`" + ("" if cfg is None or (config_root / cfg).is_file() else " (not written yet)")
        studies = results / pid / "studies" / "README.md"  # the studies behind the paper's tables, if any
        study_text = f" · studies: [{pid}/studies/]({pid}/studies/README.md)" if studies.is_file() else ""
        lines += [f"## {entry.get('title', pid)}", "",
                  f"Full protocol: {cfg_text} · {done} of {len(sub)} items rendered{study_text}", "",
                  sub.to_markdown(index=False), ""]
    out = results / "README.md"
    with atomic_path(out) as tmp:
        Path(tmp).write_text("\n".join(lines))
    return out
