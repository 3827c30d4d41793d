"""Checking one value of the file: its type, its range, and the error line that names it."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from wiber.errors import ConfigError

# Labels used as the "key" of errors that are about the file as a whole, not one key in it.
_FILE: Final = "(file)"
_YAML: Final = "(yaml)"
_TOP: Final = "(top level)"

_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9_.\-]+")
_SIMPLE_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_BAD_HOST_CHAR_RE: Final = re.compile(r"[\s/\x00-\x1f\x7f]")
_INTEGER_STRING_RE: Final = re.compile(r"[+-]?[0-9][0-9_]*")
_MISSING: Final[Any] = object()


# --------------------------------------------------------------------------------------------------
# Scalars and mappings. Every message names the value it got through repr(), so it stays one line.


def _mapping(
    file: str,
    keypath: str,
    raw: object,
    allowed: tuple[str, ...],
    *,
    allow_null: bool = False,
    example: str | None = None,
) -> Mapping[Any, Any]:
    """Returns: `raw` as a mapping whose keys are all in `allowed` (null is {} if `allow_null`).

    Raises:
        ConfigError: `raw` is not a mapping, or has a key not in `allowed` (the message lists them).
    """
    if raw is None and allow_null:
        return {}
    if not isinstance(raw, Mapping):
        like = f" like `{example}`" if example else ""
        raise ConfigError(file, keypath or _TOP, f"must be a mapping{like}, got {_describe(raw)}")
    for key in raw:
        if isinstance(key, str) and key in allowed:
            continue
        problem = (
            "unknown key" if isinstance(key, str) else f"unknown key {_describe(key)} (keys are strings)"
        )
        problem += f"; allowed here: {', '.join(allowed)}"
        if isinstance(key, str):
            close = difflib.get_close_matches(key, allowed, n=1)
            if close:
                problem += f" (did you mean {close[0]!r}?)"
        raise ConfigError(file, _join(keypath, key), problem)
    return raw


def _int(
    file: str,
    keypath: str,
    value: object,
    minimum: int,
    maximum: int | None = None,
    *,
    what: str | None = None,
    default: object = _MISSING,
) -> int:
    """Returns: `value` if it is an int (not a bool) within [minimum, maximum]. Raises: ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            file, keypath, f"must be an integer, got {_describe(value)}{_type_hint(value, default)}"
        )
    too_big = maximum is not None and value > maximum
    if value < minimum or too_big:
        if what is None:
            if minimum == 1:
                what = "a positive integer"
            elif minimum == 0:
                what = "0 or more"
            else:
                what = f"at least {minimum}"
            if maximum is not None:
                what += f" and at most {maximum}"
        raise ConfigError(file, keypath, f"must be {what}, got {value}")
    return value


def _optional_int(file: str, keypath: str, value: object) -> int | None:
    """Returns: None (unlimited) or a positive int. Raises: ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            file,
            keypath,
            f"must be a positive integer or null (unlimited), got {_describe(value)}{_type_hint(value)}",
        )
    if value < 1:
        raise ConfigError(file, keypath, f"must be a positive integer or null (unlimited), got {value}")
    return value


def _optional_seconds(file: str, keypath: str, value: object) -> float | None:
    """Returns: None (unlimited) or a positive finite number of seconds, as a float. Raises: ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            file,
            keypath,
            f"must be a positive number of seconds or null (unlimited), got {_describe(value)}"
            f"{_type_hint(value)}",
        )
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(
            file, keypath, f"must be a positive, finite number of seconds or null (unlimited), got {value!r}"
        )
    return seconds


def _bool(file: str, keypath: str, value: object) -> bool:
    """Returns: `value` if it is a bool. Raises: ConfigError."""
    if not isinstance(value, bool):
        hint = (
            " (write it without quotes)"
            if isinstance(value, str) and value.lower() in ("true", "false")
            else ""
        )
        raise ConfigError(file, keypath, f"must be true or false, got {_describe(value)}{hint}")
    return value


def _str(file: str, keypath: str, value: object) -> str:
    """Returns: `value` if it is a str. Raises: ConfigError (suggesting quotes for YAML's non-strings)."""
    if not isinstance(value, str):
        hint = "; put it in quotes" if isinstance(value, (bool, int, float)) else ""
        raise ConfigError(file, keypath, f"must be a string, got {_describe(value)}{hint}")
    return value


def _path_text(file: str, key: str, value: object, dot: str) -> str:
    """Returns: `value` if it is a usable path string (`dot`: what ``.`` means there, for the error).

    Raises: ConfigError (not a string, empty, or holding a NUL).
    """
    text = _str(file, key, value)
    if not text:
        raise ConfigError(file, key, f"must not be empty; use . for {dot}")
    if "\0" in text:
        raise ConfigError(file, key, "must not contain a NUL character")
    return text


def _type_hint(value: object, default: object = _MISSING) -> str:
    """Returns: advice for a common wrong type (a quoted number, an empty value), or ""."""
    if isinstance(value, str) and _INTEGER_STRING_RE.fullmatch(value.strip()):
        return " (write the number without quotes)"
    if value is None and default is not _MISSING:
        return f"; leave the key out for the default, {default}"
    return ""


def _describe(value: object) -> str:
    """Returns: how the YAML author would name `value` ("true", "the string '50'", "a list")."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _short(value)
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__} ({_short(value)})"


def _short(value: object, limit: int = 60) -> str:
    """Returns: repr(value), cut to `limit` characters: one line, however odd the value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(keypath: str, key: object) -> str:
    """Returns: the key path of `key` inside `keypath`: ``a.b`` for plain names, ``a['x.y']`` otherwise."""
    if isinstance(key, str) and len(key) <= 60 and _SIMPLE_KEY_RE.fullmatch(key):
        return f"{keypath}.{key}" if keypath else key
    return f"{keypath}[{_short(key)}]"
