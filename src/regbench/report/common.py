"""Pieces shared by the report modules that render extra items (:mod:`.extras`, :mod:`.budget`): file
suffixes, the scaled-down footer line and its placement on figures. It imports no other report module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import provenance

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure

TABLE_SUFFIXES = ("md", "csv", "tex")
FIGURE_SUFFIXES = ("png", "pdf")


def scale_line(notes: Sequence[str], prov: Mapping[str, Any] | None) -> str | None:
    """The SCALED-DOWN note among ``notes`` (from the experiment), else :func:`provenance.scale_note`."""
    for n in notes or []:
        if "SCALED-DOWN" in str(n).upper():
            return str(n)
    return provenance.scale_note(prov) if prov else None


def _footer(fig: Figure, line: str | None, height_in: float) -> float:
    """Write ``line`` as a small red footer; return the bottom fraction to keep free in ``tight_layout``."""
    if not line:
        return 0.0
    fig.text(0.5, 0.005, line, ha="center", va="bottom", fontsize=7, color="firebrick", wrap=True)
    return min(0.25, 0.4 / height_in)
