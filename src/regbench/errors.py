"""Exceptions raised by regbench. Each message names the file or key at fault and what to do."""

from __future__ import annotations


class RegbenchError(Exception):
    """Base class of every error regbench raises on purpose (bad input, bad config, missing data)."""


class ConfigError(RegbenchError):
    """A configuration file fails its schema or names something unknown (message names the key)."""


class DataError(RegbenchError):
    """An input file is unreadable or holds invalid data (NaNs, zero spacing, wrong shape)."""


class ChecksumError(DataError):
    """A downloaded or local file does not match its pinned hash (message names file, expected, actual)."""


class ManualDownloadRequired(RegbenchError):
    """A dataset must be obtained by hand; the message names the page, the files and the target path."""


class ShapeMismatchError(DataError):
    """Fixed and moving images (or image and label) do not share a grid where the method needs one."""
