"""Provenance of a benchmark result: config hash, code commit, seed, package versions, devices, scale.

Every table and figure regbench renders carries this record so that a number can be traced to the exact
configuration and code that produced it, and so that a scaled-down run (fewer epochs, fewer pairs, smaller
images) is never mistaken for the paper protocol.

The record is a plain JSON-serialisable ``dict`` (see :func:`collect`); :func:`provenance_markdown`,
:func:`provenance_latex` and :func:`provenance_lines` render it for Markdown, LaTeX (``%`` comments) and CSV
(``#`` comments, via ``provenance_lines(prov, prefix="# ")``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

#: Reported packages: key in the versions dict -> (distribution name, import name).
PACKAGES: dict[str, tuple[str, str]] = {
    "regbench": ("regbench", "regbench"),
    "torch": ("torch", "torch"),
    "numpy": ("numpy", "numpy"),
    "scipy": ("scipy", "scipy"),
    "pandas": ("pandas", "pandas"),
    "nibabel": ("nibabel", "nibabel"),
    "SimpleITK": ("SimpleITK", "SimpleITK"),
    "antspyx": ("antspyx", "ants"),
    "snakemake": ("snakemake", "snakemake"),
    "matplotlib": ("matplotlib", "matplotlib"),
    "seaborn": ("seaborn", "seaborn"),
}

NOT_INSTALLED = "not installed"


def _json_default(obj: Any) -> Any:
    """Make paths, numpy scalars/arrays and sets serialisable in a stable way."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"config value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no whitespace and ASCII escapes: equal configs give byte-identical text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default)


def config_hash(cfg: Mapping[str, Any]) -> str:
    """Return the first 12 hex digits of the SHA-256 of the config's canonical JSON.

    Args:
        cfg: the (validated) configuration mapping. Key order does not matter; values must be JSON-like
            (``Path``, numpy scalars/arrays and sets are converted).

    Returns:
        A 12-character lowercase hex string, e.g. ``"3f2a9c0d11be"``.

    Raises:
        TypeError: a value cannot be serialised.
    """
    return hashlib.sha256(canonical_json(cfg).encode("utf-8")).hexdigest()[:12]


def _git(repo_dir: str | Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(repo_dir), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def git_commit(repo_dir: str | Path = ".") -> str:
    """Return the full commit hash of ``HEAD`` in ``repo_dir``, with ``-dirty`` if tracked files changed.

    Only read-only git commands are run (``rev-parse``, ``status --porcelain --untracked-files=no`` with
    ``--no-optional-locks`` so the index is not refreshed). Like ``git describe --dirty``, untracked files
    (e.g. results) do not make the tree dirty; modified, staged or deleted tracked files do.

    Returns:
        ``"<40 hex>"``, ``"<40 hex>-dirty"``, or ``"unknown"`` when ``repo_dir`` is not inside a git work
        tree, has no commit yet, or git is not installed.
    """
    try:
        commit = _git(repo_dir, "rev-parse", "--verify", "HEAD")
        status = _git(repo_dir, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return f"{commit}-dirty" if status else commit


def _version_of(dist: str, module: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        if importlib.util.find_spec(module) is None:
            return NOT_INSTALLED
        mod = importlib.import_module(module)
    except Exception:  # a broken install is reported as missing, never fatal
        return NOT_INSTALLED
    return str(getattr(mod, "__version__", "unknown"))


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour affects results.

    Versions come from installed distribution metadata (fast, no import); a package importable without
    metadata falls back to its ``__version__``. Keys: ``python, regbench, torch, numpy, scipy, pandas,
    nibabel, SimpleITK, antspyx, snakemake, matplotlib, seaborn`` (``antspyx`` is imported as ``ants``).

    Returns:
        ``{name: version}``; a missing package maps to ``"not installed"``.
    """
    out = {"python": platform.python_version()}
    for key, (dist, module) in PACKAGES.items():
        out[key] = _version_of(dist, module)
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        flat: dict[str, Any] = {}
        for k, v in d.items():
            flat.update(_flatten(v, f"{prefix}{k}."))
        return flat
    return {prefix[:-1]: d} if prefix else {"": d}


def collect(
    cfg: Mapping[str, Any], devices: list[str] | None = None, repo_dir: str | Path | None = None
) -> dict[str, Any]:
    """Gather the provenance record of a run.

    Args:
        cfg: the run configuration. Read keys: ``seed`` (any JSON value, ``None`` if absent), ``scale``
            (mapping of knobs that differ from the paper protocol, e.g. ``{"epochs": 20, "max_pairs": 10}``;
            ``{}`` if absent) and ``protocol`` (free text describing the protocol followed; falls back to
            ``cfg["scale"]["protocol"]``, then ``""``).
        devices: devices the results were computed on (e.g. the distinct ``device`` values of the metrics
            tables: ``["cuda:0 (NVIDIA H100)", "cpu"]``); duplicates are removed, order kept.
        repo_dir: directory inside the git work tree of the code (for :func:`git_commit`). Default: the
            folder of this package (right for an editable install, wherever the run's working directory
            is), falling back to the current directory when that is not inside a git work tree.

    Returns:
        A JSON-serialisable dict with keys ``config_hash, commit, seed, versions, devices, platform, scale,
        protocol, timestamp_utc`` (ISO 8601, seconds, ``Z`` suffix).
    """
    scale = cfg.get("scale") or {}
    protocol = cfg.get("protocol")
    if protocol is None and isinstance(scale, Mapping):
        protocol = scale.get("protocol")
    seen: list[str] = []
    for d in devices or []:
        d = str(d)
        if d not in seen:
            seen.append(d)
    if repo_dir is None:
        commit = git_commit(Path(__file__).resolve().parent)
        if commit == "unknown":
            commit = git_commit(".")
    else:
        commit = git_commit(repo_dir)
    return {
        "config_hash": config_hash(cfg),
        "commit": commit,
        "seed": cfg.get("seed"),
        "versions": package_versions(),
        "devices": seen,
        "platform": f"{platform.platform()} ({platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()})",
        "scale": json.loads(canonical_json(dict(scale) if isinstance(scale, Mapping) else {"value": scale})),
        "protocol": "" if protocol is None else str(protocol),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _scale_items(prov: Mapping[str, Any]) -> dict[str, Any]:
    """Flattened ``scale`` knobs (dotted keys), without ``None`` values (= as in the paper protocol) and without
    the ``protocol`` text, which has its own line."""
    return {k: v for k, v in _flatten(prov.get("scale") or {}).items() if k and k != "protocol" and v is not None}


def scale_note(prov: Mapping[str, Any]) -> str | None:
    """One line stating that the run is scaled down, listing the ``scale`` knobs; ``None`` if there are none.

    Example: ``"scaled-down run (differs from the paper protocol): epochs=20, max_pairs=10"``. Knobs set to
    ``None`` (meaning "as in the protocol") are left out, and so is a ``protocol`` entry of the scale block
    (shown as its own provenance line).
    """
    scale = _scale_items(prov)
    if not scale:
        return None
    knobs = ", ".join(f"{k}={v}" for k, v in scale.items())
    return f"scaled-down run (differs from the paper protocol): {knobs}"


def provenance_lines(prov: Mapping[str, Any] | None, prefix: str = "") -> list[str]:
    """Render a record as short ``key: value`` lines, each starting with ``prefix`` (``"# "``, ``"% "``).

    Lines: ``commit``, ``config``, ``seed``, ``devices``, ``generated`` (UTC), ``platform``, ``versions``,
    ``scale`` (only when non-empty) and ``protocol`` (only when non-empty). Missing keys show ``unknown``.
    Newlines inside values are replaced by spaces so every line stays a comment.
    """
    if not prov:
        return [f"{prefix}provenance: unavailable"]
    versions = prov.get("versions") or {}
    devices = prov.get("devices") or []
    items = [
        ("commit", prov.get("commit", "unknown")),
        ("config", prov.get("config_hash", "unknown")),
        ("seed", prov.get("seed", "unknown")),
        ("devices", ", ".join(map(str, devices)) if devices else "unknown"),
        ("generated", prov.get("timestamp_utc", "unknown")),
        ("platform", prov.get("platform", "unknown")),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) if versions else "unknown"),
    ]
    scale = _scale_items(prov)
    if scale:
        items.append(("scale", ", ".join(f"{k}={v}" for k, v in scale.items())))
    if prov.get("protocol"):
        items.append(("protocol", prov["protocol"]))
    return [f"{prefix}{k}: {' '.join(str(v).split())}" for k, v in items]


def provenance_markdown(prov: Mapping[str, Any] | None) -> str:
    """A compact Markdown block to put under every table or figure.

    Format::

        **Provenance** — commit `abc…` · config `3f2a9c0d11be` · seed 0 · devices: cuda:0 · generated 2025-…Z
        <sub>versions: python 3.11.9, regbench 0.1.0, torch 2.13.0, …; platform: Linux-…</sub>
        <sub>scale (differs from the paper protocol): epochs=20, …</sub>      (only for a scaled run)
        <sub>protocol: …</sub>                                               (only when given)

    Returns:
        The block, ending with a newline.
    """
    if not prov:
        return "**Provenance** — unavailable\n"
    devices = prov.get("devices") or []
    versions = prov.get("versions") or {}
    head = (
        f"**Provenance** — commit `{prov.get('commit', 'unknown')}` · config `{prov.get('config_hash', 'unknown')}`"
        f" · seed {prov.get('seed', 'unknown')} · devices: {', '.join(map(str, devices)) or 'unknown'}"
        f" · generated {prov.get('timestamp_utc', 'unknown')}"
    )
    lines = [head + "  "]
    vers = ", ".join(f"{k} {v}" for k, v in versions.items()) or "unknown"
    lines.append(f"<sub>versions: {vers}; platform: {prov.get('platform', 'unknown')}</sub>  ")
    scale = _scale_items(prov)
    if scale:
        knobs = ", ".join(f"{k}={v}" for k, v in scale.items())
        lines.append(f"<sub>scale (differs from the paper protocol): {knobs}</sub>  ")
    if prov.get("protocol"):
        lines.append(f"<sub>protocol: {' '.join(str(prov['protocol']).split())}</sub>  ")
    return "\n".join(lines) + "\n"


def provenance_latex(prov: Mapping[str, Any] | None) -> str:
    """The record as LaTeX comment lines (``% provenance`` header, then ``% key: value``), newline-terminated.

    Everything after ``%`` is ignored by TeX, so values are written verbatim; the block never affects
    typesetting.
    """
    return "\n".join(["% provenance"] + provenance_lines(prov, prefix="% ")) + "\n"


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - debugging helper
    """Print the provenance record of an empty config as JSON (``python -m regbench.provenance``)."""
    print(json.dumps(collect({}, []), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
