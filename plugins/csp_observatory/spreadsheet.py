"""CSV cells that a spreadsheet opens as text, never as a formula (OWASP "CSV injection").

A partner's free text, a login or a client name can begin with ``=``, ``+``, ``-`` or ``@``; Excel and LibreOffice
would evaluate such a cell (``=HYPERLINK(...)`` sends data away when clicked). Every CSV the observatory hands to a
person goes through :func:`text_cell`, which puts a ``'`` before such text: spreadsheets show the value as written.
The data itself is stored in PostGIS exactly as sent; only the exported copy is marked.
"""
from __future__ import annotations

from typing import Any, Final

#: The first characters that make a spreadsheet read a cell as a formula (tab and CR start one in some).
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: Any) -> Any:
    """``value`` for a CSV cell: None as empty, text that a spreadsheet would evaluate prefixed with ``'``, anything
    else (numbers, dates) as it is."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
