"""Values crossing from a containerd config into podling TOML: Go duration strings
(containerd's timeouts, e.g. "4h0m0s") in as podling's seconds, podling TOML text out.

Go's time.ParseDuration syntax: an optional sign, then one or more `<number><unit>` pairs,
the number possibly with a fraction ("1.5h"), units ns, us (µs, μs), ms, s, m, h; "0" alone
is allowed. Nothing else is: no spaces, no bare numbers other than 0, no days.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_WHOLE = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")


def parse_go_duration(text: str) -> float:
    """Seconds in the Go duration `text`. ValueError naming the text if it is not one."""
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _WHOLE.fullmatch(text):
        raise ValueError(f'{text!r} is not a Go duration (like "4h0m0s", "90s" or "500ms")')
    seconds = sum(float(num) * _UNITS[unit] for num, unit in _PART.findall(text))
    return -seconds if text.startswith("-") else seconds


def config_range(section: type[Any], name: str) -> tuple[float, float]:
    """The ("range", (lo, hi)) check podling's config declares for `section.name`."""
    for f in dataclasses.fields(section):
        check = f.metadata.get("check")
        if f.name == name and check is not None and check[0] == "range":
            return float(check[1][0]), float(check[1][1])
    raise LookupError(f"{section.__name__}.{name} declares no range")


def duration_setting(value: Any, lo: float, hi: float) -> int | float:
    """A containerd duration value as podling seconds in [lo, hi] (an int when whole).

    ValueError saying why when `value` is not a duration string, is zero or negative
    (containerd's "off"; podling's timeouts cannot be turned off), or is out of range.
    """
    if not isinstance(value, str):
        raise ValueError(f'{value!r} is not a Go duration string (like "4h0m0s")')
    seconds = parse_go_duration(value)
    if seconds < 0:
        raise ValueError(f"{value!r} is negative")
    if seconds == 0:
        raise ValueError(
            f"{value!r} turns the timeout off in containerd; podling always applies one "
            f"({lo:g} to {hi:g} seconds), so its default stays"
        )
    if not lo <= seconds <= hi:
        raise ValueError(
            f"{value!r} is {seconds:g} seconds; podling allows {lo:g} to {hi:g} seconds"
        )
    return int(seconds) if seconds.is_integer() else seconds


# -- TOML out ---------------------------------------------------------------------------


def toml_key(k: str) -> str:
    """`k` as a TOML key: bare when it can be, else quoted."""
    return k if _BARE_KEY.match(k) else json.dumps(k)


def render_toml(doc: dict[str, Any]) -> str:
    """`doc` (nested tables of strings, numbers, booleans and lists) as TOML text."""
    lines: list[str] = []
    _emit(doc, [], lines)
    return "\n".join(lines).rstrip() + "\n" if lines else ""


def _emit(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    if path and scalars:
        lines.append("[" + ".".join(toml_key(p) for p in path) + "]")
    for k, v in scalars:
        lines.append(f"{toml_key(k)} = {_value(v)}")
    if scalars:
        lines.append("")
    for k, v in tables:
        _emit(v, [*path, k], lines)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    # A JSON string is a valid TOML basic string.
    return json.dumps(str(v), ensure_ascii=False)
