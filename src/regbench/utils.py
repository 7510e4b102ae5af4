"""Small shared utilities: atomic writes, hashing, seeding, device selection, logging."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """Return a module logger; configures a plain stderr handler once if the root has none."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=os.environ.get("REGBENCH_LOGLEVEL", "INFO"), format=LOG_FORMAT)
    return logging.getLogger(name)


def _umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffixes (``x.nii.gz`` -> ``.x.<rand>.tmp.nii.gz``) so that writers
    which infer the format from the extension (nibabel, SimpleITK, pandas) behave as for the final name.
    A failure inside the block removes the temporary file and leaves any existing ``path`` untouched.
    The final file gets the permissions an ordinary ``open(path, "w")`` would give (``0o666`` less the
    process umask), not the owner-only mode of ``tempfile.mkstemp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def staging_dir(parent: str | os.PathLike, name: str) -> Path:
    """A fresh hidden folder ``parent/.<name>.<rand>.partial`` for building an output folder that is renamed
    into place when complete. Unlike ``tempfile.mkdtemp`` (owner-only ``0o700``), it gets the mode an
    ordinary ``mkdir`` would give (``0o777`` less the umask), so the published folder is readable like any
    other."""
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=parent))
    os.chmod(stage, 0o777 & ~_umask())
    return stage


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


def select_device(preference: str = "auto"):
    """Return a ``torch.device``: CUDA when available (``auto``), else CPU.

    ``preference`` may be ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. Snakemake's ``gpu`` resource is a
    counter and never sets ``CUDA_VISIBLE_DEVICES``; set it yourself on multi-GPU machines.

    Raises:
        RuntimeError: ``cuda`` was requested explicitly but no CUDA device is available.
    """
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(preference)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but torch.cuda.is_available() is False")
    return dev


def keeps_locale(func):
    """Decorator: restore the process locale (all categories) after ``func``, whatever it did.

    GDCM (SimpleITK's DICOM I/O) switches the C locale to ``"C"`` while it formats numbers and does not always put
    the original back; Python's default text encoding then falls to ASCII for the rest of the process, and later
    reads of UTF-8 files (configs with "±") fail. Used on the DICOM readers (:mod:`regbench.datasets.ding_prep`).
    """
    import functools
    import locale

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        saved = locale.setlocale(locale.LC_ALL)
        try:
            return func(*args, **kwargs)
        finally:
            locale.setlocale(locale.LC_ALL, saved)

    return wrapper
