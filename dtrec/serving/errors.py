"""The service's refusals: one sentence each, shown to the user as is, and the units they quote."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input; the message is one sentence that can be shown to the user as is."""


class ImageError(InputError):
    """The uploaded file itself was refused (not a readable, safe image of an allowed size)."""


def human_bytes(n: float) -> str:
    """A byte count in human units, base 1024 as the limits are set: 209715200 -> '200 MB'."""
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} bytes"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GB":
            break
    return f"{n:.0f} {unit}" if abs(n) >= 100 else f"{n:.3g} {unit}"


def human_seconds(s: float) -> str:
    """'10 minutes', '1 hour', '45 seconds'."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if s >= size:
            v = s / size
            return f"{v:g} {unit}" + ("" if v == 1 else "s")
    return f"{s:g} seconds"
