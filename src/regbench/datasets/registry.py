"""Dataset registry (``config/datasets.yaml``) loading and generic schema validation of config files.

Schemas live in ``workflow/schemas/`` of the repository. :func:`schema_path` finds one by walking up from a
start folder (default: the current directory); :func:`validate_config` validates any loaded config against a
schema and turns every violation into a :class:`~regbench.errors.ConfigError` whose message names the file,
the key path at fault and what is wrong, e.g.::

    config/datasets.yaml: datasets.lits.source: 'page' is a required property
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, DataError

__all__ = ["DEFAULT_REGISTRY", "SCHEMA_DIR", "load_registry", "load_yaml", "schema_path", "validate_config"]

#: Default registry location, relative to the working directory (the repository root under Snakemake).
DEFAULT_REGISTRY = Path("config/datasets.yaml")
#: Default schema folder, relative to the working directory.
SCHEMA_DIR = Path("workflow/schemas")
_MAX_REPORTED_ERRORS = 20


def schema_path(name: str, start: str | os.PathLike | None = None) -> Path:
    """Return the path of schema ``name`` (e.g. ``"datasets.schema.yaml"``).

    Looks for ``workflow/schemas/<name>`` in ``start`` (default: the current directory) and each of its
    parents, then in the source checkout this package was installed from (editable installs), then for a
    copy shipped inside the package (``regbench/schemas/<name>``).

    Raises:
        ConfigError: no such schema was found (the message lists where it looked).
    """
    start_dir = Path(start).resolve() if start is not None else Path.cwd().resolve()
    if start_dir.is_file():
        start_dir = start_dir.parent
    looked: list[Path] = []
    for folder in (start_dir, *start_dir.parents):
        cand = folder / SCHEMA_DIR / name
        looked.append(cand)
        if cand.is_file():
            return cand
    checkout = Path(__file__).resolve().parents[3] / SCHEMA_DIR / name
    looked.append(checkout)
    if checkout.is_file():
        return checkout
    packaged = Path(__file__).resolve().parents[1] / "schemas" / name
    looked.append(packaged)
    if packaged.is_file():
        return packaged
    raise ConfigError(
        f"schema {name!r} not found; looked for {SCHEMA_DIR / name} in {start_dir} and its parents, "
        f"in {checkout.parent} and in {packaged.parent}. Run from the repository root or pass the schema path."
    )


def load_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with ``yaml.safe_load``.

    Raises:
        ConfigError: the file is missing, unreadable or not valid YAML (the message names the file and,
            for syntax errors, the line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: file not found") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e})") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        raise ConfigError(f"{path}: invalid YAML{where}: {e}") from e


def _json_normalised(data: Any) -> Any:
    """Return a JSON-compatible deep copy: integer keys become strings, dates become ISO strings."""
    return json.loads(json.dumps(data, default=str))


def _key_path(parts) -> str:
    """Format a jsonschema ``absolute_path`` as ``a.b[3].c`` (``<root>`` when empty)."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "<root>"


def _leaf_errors(error):
    """Yield the most specific errors under ``error`` (descending into oneOf/anyOf contexts)."""
    if error.context:
        for sub in error.context:
            yield from _leaf_errors(sub)
    else:
        yield error


def validate_config(data: Any, schema_path: str | os.PathLike, source_name: str) -> None:
    """Validate loaded config ``data`` against the JSON schema (YAML or JSON file) at ``schema_path``.

    Integer mapping keys (as YAML produces for ``0: background``) are validated as their string form.
    ``source_name`` is how the config is named in messages (usually its path as the user wrote it).

    Raises:
        ConfigError: ``data`` violates the schema. The first line names the most relevant violation as
            ``<source_name>: <key.path>: <problem>``; further lines list the other violations (up to 20).
            Also raised when the schema itself cannot be read or is not a valid schema.
    """
    import jsonschema
    from jsonschema.exceptions import best_match

    schema_file = Path(schema_path)
    schema = load_yaml(schema_file)
    if not isinstance(schema, dict):
        raise ConfigError(f"{schema_file}: a JSON schema must be a mapping, got {type(schema).__name__}")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ConfigError(f"{schema_file}: invalid JSON schema at {_key_path(e.absolute_path)}: {e.message}") from e
    instance = _json_normalised(data)
    errors = list(cls(schema).iter_errors(instance))
    if not errors:
        return
    best = best_match(errors)
    lines = [f"{source_name}: {_key_path(best.absolute_path)}: {best.message}"]
    seen = {lines[0]}
    leaves = sorted(
        (leaf for err in errors for leaf in _leaf_errors(err)), key=lambda e: [str(p) for p in e.absolute_path]
    )
    for err in leaves:
        line = f"{source_name}: {_key_path(err.absolute_path)}: {err.message}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    extra = len(lines) - 1 - _MAX_REPORTED_ERRORS
    lines = lines[: _MAX_REPORTED_ERRORS + 1]
    if extra > 0:
        lines.append(f"... and {extra} more")
    raise ConfigError("\n".join(lines))


def load_registry(
    path: str | os.PathLike = DEFAULT_REGISTRY, schema: str | os.PathLike | None = None
) -> dict[str, dict]:
    """Load and validate the dataset registry; return ``{dataset name: entry}``.

    Each entry is the dataset's mapping from the YAML (``description``, ``modalities``, ``ndim``, ``labels``,
    ``spacing_mm``, ``licence``, ``citation``, ``source``, ``local_path``, ...), deep-copied so that YAML
    anchors shared between entries are independent, with ``labels`` keys converted to ``int``.

    Args:
        path: the registry YAML (default ``config/datasets.yaml`` relative to the working directory).
        schema: the JSON schema; default ``workflow/schemas/datasets.schema.yaml`` found by
            :func:`schema_path` starting from the registry's folder.

    Raises:
        ConfigError: the file is missing or not YAML, or fails the schema; the message names the file, the
            dataset and the key path, e.g. ``config/datasets.yaml: datasets.lits.source: 'page' is a
            required property``.
    """
    path = Path(path)
    data = load_yaml(path)
    schema_file = Path(schema) if schema is not None else schema_path("datasets.schema.yaml", path.resolve().parent)
    validate_config(data, schema_file, str(path))
    # one deepcopy per entry: objects shared through YAML anchors/merge keys become independent copies
    datasets = {name: copy.deepcopy(entry) for name, entry in data["datasets"].items()}
    for name, entry in datasets.items():
        entry["labels"] = {int(k): v for k, v in (entry.get("labels") or {}).items()}
        entry.setdefault("local_path", None)
        mf = entry.get("source", {}).get("manifest_file")
        if mf:
            entry["source"]["manifest"] = {
                **_read_manifest_file(Path(path).parent / mf["path"], mf.get("prefix", ""), mf.get("select", ""),
                                      f"{path}: datasets.{name}.source.manifest_file"),
                **(entry["source"].get("manifest") or {}),
            }
    return datasets


def read_manifest_tsv(tsv: str | os.PathLike) -> dict[str, str]:
    """Read a per-file manifest: a TSV with the header ``path<TAB>sha256`` and one row per file.

    Raises:
        DataError: the file is missing or malformed (the message names it and the line).
    """
    tsv = Path(tsv)
    try:
        lines = tsv.read_text().splitlines()
    except OSError as e:
        raise DataError(f"{tsv}: cannot read the manifest ({e})") from e
    if not lines or lines[0].split("\t") != ["path", "sha256"]:
        raise DataError(f"{tsv}: line 1: expected the header 'path<TAB>sha256'")
    out: dict[str, str] = {}
    for i, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[1]) or not parts[0]:
            raise DataError(f"{tsv}: line {i}: expected '<path><TAB><64 hex digits>', got {line!r}")
        out[parts[0]] = parts[1]
    return out


def _read_manifest_file(tsv: Path, prefix: str, select: str, where: str) -> dict[str, str]:
    """Rows of a manifest TSV (:func:`read_manifest_tsv`) whose path starts with ``select``, keyed
    ``prefix + path``.

    Raises:
        ConfigError: the file is missing or malformed, or selects no row.
    """
    try:
        rows = read_manifest_tsv(tsv)
    except DataError as e:
        raise ConfigError(f"{where}: {e}") from e
    out = {prefix + rel: digest for rel, digest in rows.items() if rel.startswith(select)}
    if not out:
        raise ConfigError(f"{where}: no row of {tsv} starts with {select!r}")
    return out
