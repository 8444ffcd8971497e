"""How sure a suggestion is, as the director sees it: a whole percentage.

The pages and the CLI show a confidence rounded to a whole percent, and "at least 99 %
sure" means every suggestion shown as 99 % or more. Both sides are computed here, the
display in Python and the filter in SQL with the same arithmetic (times 100, plus one
half, compared with a whole number), so a suggestion shown as 99 % is never left out
of "at least 99 %" (0.98995 shows as 99 %), and one shown as 98 % is never taken.
"""

from __future__ import annotations

import math

from sqlalchemy import ColumnElement
from sqlalchemy.orm import InstrumentedAttribute


def shown_percent(confidence: float) -> int:
    """The whole percentage shown for `confidence` (0-1), rounded half up."""
    return math.floor(float(confidence) * 100 + 0.5)


def at_least(column: InstrumentedAttribute | ColumnElement, percent: int) -> ColumnElement:
    """SQL: `column` (a 0-1 confidence) is shown as `percent` % or more. floor(x + 0.5)
    >= p is x + 0.5 >= p for a whole p, so the database needs no floor()."""
    return column * 100 + 0.5 >= int(percent)


def threshold_percent(threshold: float) -> int:
    """A 0-1 threshold as the whole percentage the page shows for it."""
    return shown_percent(threshold)
