"""Warnings as data. Each is `{code, message, remedy, values, text}`: a stable `code` a program or test can
match, the numbers behind it in `values`, what was seen (`message`), what to do about it (`remedy`), and
`text`, the one line shown to a person (message; remedy)."""

from __future__ import annotations

from typing import Any


def warning(code: str, message: str, remedy: str = "", **values: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "remedy": remedy, "values": values,
            "text": f"{message}; {remedy}" if remedy else message}


def as_warning(w: Any) -> dict[str, Any]:
    """A warning from a result written before warnings were data (free text): code `text`."""
    if isinstance(w, dict):
        return w
    return {"code": "text", "message": str(w), "remedy": "", "values": {}, "text": str(w)}
