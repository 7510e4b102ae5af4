"""Access to a prepared dataset: ``data/prep/<dataset>/{cases.tsv, pairs.tsv}`` written by preprocessing.

``cases.tsv`` has one row per case: ``case``, ``split`` and one column per file (a modality such as ``t1``,
``seg`` for the label map, optionally ``ddf`` for a ground-truth template-to-case displacement), paths
relative to the folder of ``cases.tsv``. ``pairs.tsv`` lists registration pairs: ``pair_id, fold, split,
fixed, moving`` (``split`` is ``train`` or ``test``; the split is written once and read by every stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .io import Image, load_image

CASE_COLUMNS = ("case", "split")
PAIR_COLUMNS = ("pair_id", "fold", "split", "fixed", "moving")


def _read_tsv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: not found (run the preprocess stage first)")
    df = pd.read_csv(path, sep="\t", dtype={"case": str, "fixed": str, "moving": str, "pair_id": str})
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    return df


def is_label_column(column: str) -> bool:
    """Label-map columns of ``cases.tsv`` are named ``seg`` or ``seg_<suffix>`` (e.g. ``seg_256``)."""
    return column == "seg" or column.startswith("seg_")


@dataclass
class PreparedDataset:
    """A prepared dataset folder (see module docstring). Paths in the tables are resolved against ``root``."""

    root: Path
    cases: pd.DataFrame
    pairs: pd.DataFrame

    @classmethod
    def open(cls, root: str | Path) -> "PreparedDataset":
        """Read ``cases.tsv`` and ``pairs.tsv`` from ``root``.

        Raises:
            DataError: a table is missing, lacks a required column, or a pair names an unknown case.
        """
        root = Path(root)
        cases = _read_tsv(root / "cases.tsv", CASE_COLUMNS).set_index("case", drop=False)
        pairs = _read_tsv(root / "pairs.tsv", PAIR_COLUMNS)
        unknown = sorted((set(pairs["fixed"]) | set(pairs["moving"])) - set(cases.index))
        if unknown:
            raise DataError(f"{root / 'pairs.tsv'}: pairs name unknown case(s) {unknown[:5]}")
        return cls(root, cases, pairs)

    def path(self, case: str, column: str) -> Path:
        """Absolute path of ``column`` (e.g. ``t1``, ``seg``) for ``case``.

        Raises:
            DataError: unknown case or column, or an empty cell.
        """
        if column not in self.cases.columns:
            raise DataError(f"{self.root / 'cases.tsv'}: no column {column!r}; has {list(self.cases.columns)}")
        if case not in self.cases.index:
            raise DataError(f"{self.root / 'cases.tsv'}: no case {case!r}")
        value = self.cases.at[case, column]
        if not isinstance(value, str) or not value:
            raise DataError(f"{self.root / 'cases.tsv'}: case {case!r} has no {column!r} file")
        return self.root / value

    def load(self, case: str, column: str) -> Image:
        """Load a case's image (float32) or label map (a column named ``seg*``: rounded to integers)."""
        img = load_image(self.path(case, column))
        if is_label_column(column):
            img.array = np.rint(img.array).astype(np.int16)
        return img

    def has(self, column: str) -> bool:
        """Whether the cases table has a non-empty ``column`` for every case."""
        return column in self.cases.columns and self.cases[column].notna().all()

    def pairs_for(self, fold: int, split: str) -> pd.DataFrame:
        """Pairs of ``fold`` and ``split`` (``train`` or ``test``), in table order.

        Raises:
            DataError: none exist (a wrong fold number or split name in the config).
        """
        sel = self.pairs[(self.pairs["fold"].astype(int) == int(fold)) & (self.pairs["split"] == split)]
        if sel.empty:
            raise DataError(f"{self.root / 'pairs.tsv'}: no {split} pairs for fold {fold}")
        return sel.reset_index(drop=True)


def subsample_pairs(pairs: pd.DataFrame, max_pairs: int | None, seed: int) -> pd.DataFrame:
    """Return at most ``max_pairs`` rows chosen with a fixed seed (all rows, in order, when ``None``).

    Applied twice (``subsample_pairs(subsample_pairs(p, 90, s), 30, s)``) it gives a subset of the first
    selection: how a per-method cap (``scale.method_max_test_pairs``) keeps its pairs among everyone's.
    """
    if max_pairs is None or len(pairs) <= max_pairs:
        return pairs
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(pairs), size=int(max_pairs), replace=False))
    return pairs.iloc[idx].reset_index(drop=True)
