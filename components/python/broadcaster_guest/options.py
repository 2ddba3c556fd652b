"""Typed, validated access to ``[publishers.<name>.options]``.

The host passes the options as a JSON object. :class:`Options` reads them one by one, checks
each value's type, and remembers which names the backend asked for, so that after ``init``
the glue can refuse any option the backend does not know (a misspelt ``stream_nmae`` is an
error, not silently ignored). Every problem is an :class:`OptionError` whose message names
the option; the host shows it to the operator and does not start the publisher.
"""

import json
from typing import Any, Dict, Iterable, List, Optional

# Marks an option without a default: leaving it out is an error.
REQUIRED: Any = object()
_ABSENT: Any = object()


class OptionError(ValueError):
    """A bad option; ``str()`` is ``option `<name>`: <message>``."""

    def __init__(self, option: str, message: str):
        super().__init__(f"option `{option}`: {message}")
        self.option = option


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class Options:
    """The publisher's options. ``raw`` is the parsed JSON object."""

    def __init__(self, raw: Dict[str, Any]):
        self.raw = raw
        self._known: List[str] = []
        self._allow_unknown = False

    # -- reading ---------------------------------------------------------------------------

    def get(self, name: str, default: Any = None) -> Any:
        """The raw JSON value of ``name`` (``default`` when absent or ``null``), unchecked."""
        if name not in self._known:
            self._known.append(name)
        value = self.raw.get(name)
        return default if value is None else value

    def _value(self, name: str, default: Any, expected: str) -> Any:
        """The value of ``name``, or ``_ABSENT`` when it is not set and has a default."""
        value = self.get(name)
        if value is None:
            if default is REQUIRED:
                raise OptionError(name, f"required ({expected})")
            return _ABSENT
        return value

    def string(self, name: str, default: Any = REQUIRED, *, allow_empty: bool = False) -> str:
        """A string option; empty strings are refused unless ``allow_empty``."""
        expected = "a string" if allow_empty else "a non-empty string"
        value = self._value(name, default, expected)
        if value is _ABSENT:
            return default
        if not isinstance(value, str) or (not value and not allow_empty):
            raise OptionError(name, f"expected {expected}, got {_show(value)}")
        return value

    def integer(
        self,
        name: str,
        default: Any = REQUIRED,
        *,
        minimum: Optional[int] = 0,
        maximum: Optional[int] = 2**64 - 1,
    ) -> int:
        """An integer option (a JSON number without a fraction), by default 0 ≤ n < 2⁶⁴."""
        bounds = []
        if minimum is not None:
            bounds.append(f">= {minimum}")
        if maximum is not None:
            bounds.append(f"<= {maximum}")
        expected = "an integer" + (" " + " and ".join(bounds) if bounds else "")
        value = self._value(name, default, expected)
        if value is _ABSENT:
            return default
        # bool is an int in Python; JSON `true` is not a number.
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)):
            ok = False
        if not ok:
            raise OptionError(name, f"expected {expected}, got {_show(value)}")
        return value

    def boolean(self, name: str, default: Any = REQUIRED) -> bool:
        """A boolean option."""
        value = self._value(name, default, "true or false")
        if value is _ABSENT:
            return default
        if not isinstance(value, bool):
            raise OptionError(name, f"expected true or false, got {_show(value)}")
        return value

    def choice(self, name: str, choices: Iterable[str], default: Any = REQUIRED) -> str:
        """A string that must be one of ``choices``."""
        choices = list(choices)
        expected = "one of " + ", ".join(_show(c) for c in choices)
        value = self._value(name, default, expected)
        if value is _ABSENT:
            return default
        if value not in choices or not isinstance(value, str):
            raise OptionError(name, f"expected {expected}, got {_show(value)}")
        return value

    def string_list(self, name: str, default: Any = REQUIRED, *, allow_empty_items: bool = False) -> List[str]:
        """A list of strings; an item that is not a (non-empty) string is reported as
        ``option `name[i]```."""
        value = self._value(name, default, "a list of strings")
        if value is _ABSENT:
            return default
        if not isinstance(value, list):
            raise OptionError(name, f"expected a list of strings, got {_show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or (not item and not allow_empty_items):
                what = "a string" if allow_empty_items else "a non-empty string"
                raise OptionError(f"{name}[{i}]", f"expected {what}, got {_show(item)}")
        return list(value)

    def string_map(self, name: str, default: Any = REQUIRED, *, allow_empty_values: bool = False) -> Dict[str, str]:
        """A table of string → string (a JSON object); a bad value is reported as
        ``option `name.key```."""
        value = self._value(name, default, "a table of strings")
        if value is _ABSENT:
            return default
        if not isinstance(value, dict):
            raise OptionError(name, f"expected a table of strings, got {_show(value)}")
        for key, item in value.items():
            if not isinstance(item, str) or (not item and not allow_empty_values):
                what = "a string" if allow_empty_values else "a non-empty string"
                raise OptionError(f"{name}.{key}", f"expected {what}, got {_show(item)}")
        return dict(value)

    # -- checking --------------------------------------------------------------------------

    def refuse(self, names: Iterable[str], reason: str) -> None:
        """Fails when any of ``names`` is set: ``option `<name>`: <reason>``."""
        for name in names:
            if name in self.raw:
                raise OptionError(name, reason)

    def error(self, name: str, message: str) -> OptionError:
        """An :class:`OptionError` for a check of your own: ``raise options.error(...)``."""
        return OptionError(name, message)

    def allow_unknown(self) -> None:
        """Accept options that were not read (call it when you read ``raw`` yourself)."""
        self._allow_unknown = True

    def check_unknown(self) -> None:
        """Fails on the first option that was never read. The glue calls it after ``init``."""
        if self._allow_unknown:
            return
        for name in self.raw:
            if name not in self._known:
                known = ", ".join(self._known) if self._known else "none"
                raise OptionError(name, f"unknown option (known options: {known})")
