"""Reading runs together: ``runs compare`` (metrics and per-sample flips) and the leaderboard."""

from .leaderboard import COLUMNS, Board, Column, board_html, board_text, leaderboard
from .runs import Comparison, Flips, RunRef, compare, comparison_html, comparison_text, resolve_runs, write_comparison

__all__ = ["COLUMNS", "Board", "Column", "board_html", "board_text", "leaderboard", "Comparison", "Flips", "RunRef",
           "compare", "comparison_html", "comparison_text", "resolve_runs", "write_comparison"]
