"""Fixed-width text tables: the one layout of every table ticketlab prints (reports, overlays,
kept-weight comparisons, stability and overlap tables, the LLM layer table)."""

from __future__ import annotations

from collections.abc import Sequence


def format_columns(rows: Sequence[Sequence[str]], right_from: int = 0) -> list[str]:
    """The lines of a fixed-width text table: ``rows[0]`` is the header, a dashed rule goes under it,
    columns are two spaces apart; columns before ``right_from`` are left-aligned (names), the rest
    right-aligned (numbers). Every text table of ticketlab is laid out here so they all look alike."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < right_from else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


__all__ = ["format_columns"]
