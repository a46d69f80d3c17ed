"""Type checks of dataclass fields against their annotations, for settings read from YAML, JSON or a request.

A config field set to the wrong type (``intermediate_size: "128"``, ``do_sample: "yes"``) would otherwise get
through to a comparison (``TypeError: '>' not supported between 'str' and 'int'``), to MindSpore (a shape
error far from the file) or be used as it is (``"yes"`` is true, and so is ``"no"``). One check against the
annotation, where the settings are read, names the field, the expected type and the value found.

The rules follow what JSON and YAML produce: an ``int`` field takes integers (not ``true``/``false``, not
``2.0``); a ``float`` field takes any number; ``bool`` takes only ``true``/``false``; lists take lists or
tuples; the contents of mappings are left to the config's own checks. numpy scalars count as numbers.
"""
import functools
import os
import typing
from typing import Any, Mapping

import numpy as np

_BOOLS = (bool, np.bool_)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of the type ``annotation`` describes (see the module docstring)."""
    if annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, _BOOLS)
    if annotation is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, _BOOLS)
    if annotation is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, _BOOLS)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or args[-1] is Ellipsis
                                                     or all(matches(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation these rules do not cover (a TypeVar, a callable): the config checks it


def describe(annotation: Any) -> str:
    """``annotation`` in words: ``Optional[int]`` -> "an integer or null"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return " or ".join(dict.fromkeys(describe(arg) for arg in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (list, tuple):
        return f"a list of {describe(args[0]).split(' ', 1)[-1]}s" if args and args[0] is not Any else "a list"
    if origin is dict:
        return "a mapping"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def check_field_types(cls: type, values: Mapping[str, Any], owner: str) -> None:
    """Raise ``ValueError`` naming the first of ``values`` that does not fit its field's annotation in ``cls``.

    Args:
        cls: the dataclass.
        values: field name -> value (e.g. only those the user gave; defaults are trusted). Names that are not
            fields of ``cls`` are skipped (the caller reports unknown keys).
        owner: who is speaking in the message (``"LlamaConfig"``, ``"TrainingArguments"``, a file path).
    """
    hints = _hints(cls)
    for name, value in values.items():
        if name in hints and not matches(value, hints[name]):
            hint = " (write the number without quotes)" if isinstance(value, str) and _is_number(value) else ""
            raise ValueError(f"{owner}: {name} must be {describe(hints[name])}, found {type(value).__name__} "
                             f"{value!r}{hint}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def as_path(value: Any) -> Any:
    """``os.PathLike`` values as strings (a ``pathlib.Path`` is a fine directory name); others unchanged."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value
