"""Validation of the stages' parameters: once, where they enter (each config's ``__post_init__``), with
one message template::

    the 'top_k' parameter of query (--top-k) must be an int >= 1; got 0

Every check returns the value normalised (ints from ``20.0``, tuples from lists), so a config stores
exactly what it validated.
"""
from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral, Real

from .errors import ParamError


def fail(stage: str, name: str, rule: str, value, flag: bool | str = True):
    """Raise the one message; ``flag``: True names the option ``--<name>``, a string names it as given
    (e.g. ``"--exclude-dataset"``), False names none (a Python-only parameter)."""
    option = f" ({flag})" if isinstance(flag, str) else f" (--{name.replace('_', '-')})" if flag else ""
    raise ParamError(f"the {name!r} parameter of {stage}{option} must be {rule}; got {value!r}")


def as_int(stage: str, name: str, value, minimum: int | None = None, optional: bool = False,
           flag: bool | str = True) -> int | None:
    """An int (``20.0`` is 20: MLproject's numeric parameters are floats) >= ``minimum``."""
    if value is None and optional:
        return None
    rule = "an int" + (f" >= {minimum}" if minimum is not None else "")
    if isinstance(value, bool) or not isinstance(value, Real) or float(value) != int(value):
        fail(stage, name, rule, value, flag)
    value = int(value)
    if minimum is not None and value < minimum:
        fail(stage, name, rule, value, flag)
    return value


def as_float(stage: str, name: str, value, minimum: float | None = None, above: float | None = None,
             maximum: float | None = None, optional: bool = False, flag: bool | str = True) -> float | None:
    """A finite float within the bounds (``above``: strictly greater)."""
    if value is None and optional:
        return None
    parts = [f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
             f"<= {maximum}" if maximum is not None else ""]
    rule = "a number" + "".join(f" {p}" for p in parts if p).replace("  ", " ")
    if isinstance(value, bool) or not isinstance(value, (Real, Integral)) or value != value:
        fail(stage, name, rule, value, flag)
    value = float(value)
    if ((minimum is not None and value < minimum) or (above is not None and value <= above)
            or (maximum is not None and value > maximum) or value in (float("inf"), float("-inf"))):
        fail(stage, name, rule, value, flag)
    return value


def as_choice(stage: str, name: str, value, choices: Iterable[str], flag: bool | str = True) -> str:
    choices = tuple(choices)
    if value not in choices:
        fail(stage, name, "one of " + ", ".join(map(repr, choices)), value, flag)
    return value


def as_names(stage: str, name: str, value, optional: bool = True, flag: bool | str = True) -> tuple[str, ...] | None:
    """A tuple of non-empty names (a string is one name); None (or empty) when ``optional``."""
    if value is None or (optional and not value):
        if optional:
            return None
        fail(stage, name, "a non-empty list of names", value, flag)
    items = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(v, str) and v.strip() for v in items):
        fail(stage, name, "a list of non-empty names", value, flag)
    return tuple(v.strip() for v in items)


def as_bool(stage: str, name: str, value, flag: bool | str = True) -> bool:
    if not isinstance(value, bool):
        fail(stage, name, "True or False", value, flag)
    return value


def as_path(stage: str, name: str, value, optional: bool = True, flag: bool | str = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, (str, bytes)) and not hasattr(value, "__fspath__"):
        fail(stage, name, "a path", value, flag)
    text = str(value)
    if not text:
        fail(stage, name, "a non-empty path", value, flag)
    return text


def store(cfg, **values) -> None:
    """Write validated values back into a frozen config (from its ``__post_init__``)."""
    for key, value in values.items():
        object.__setattr__(cfg, key, value)
