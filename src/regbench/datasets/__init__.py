"""Datasets: the registry (``config/datasets.yaml``), fetching into ``<raw_root>/<name>/``, and readers.

Public API:

- :func:`load_registry` -- load and schema-check the registry, ``{name: entry}``.
- :func:`validate_config` -- schema-check any loaded config file (ConfigError naming file and key path).
- :func:`schema_path` -- locate ``workflow/schemas/<name>``.
- :func:`fetch_dataset` -- download/ingest, verify and extract a dataset atomically; writes ``FETCHED.json``.
- :func:`read_fetch_record` -- read a fetched folder's ``FETCHED.json``.
"""

from .fetch import DOWNLOADS_DIR, FETCHED_NAME, fetch_dataset, layout_patterns, read_fetch_record
from .registry import DEFAULT_REGISTRY, load_registry, load_yaml, schema_path, validate_config

__all__ = [
    "DEFAULT_REGISTRY",
    "DOWNLOADS_DIR",
    "FETCHED_NAME",
    "fetch_dataset",
    "layout_patterns",
    "load_registry",
    "load_yaml",
    "read_fetch_record",
    "schema_path",
    "validate_config",
]
