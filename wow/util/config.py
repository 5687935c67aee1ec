"""
Typed, strictly validated TOML configuration.

Each daemon describes its configuration as frozen dataclasses, one per TOML
table.  L{build} turns a parsed table into such a dataclass, refusing unknown
keys and values of the wrong type, and then runs the dataclass's own
C{validate()} hook.  Every problem becomes one L{ConfigError} whose message is
a single sentence that names the offending key, so daemons can print it and
exit without a traceback.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem, described in one sentence for the user."""


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into L{ConfigError}."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list or origin is tuple:
        return "a list"
    if origin is dict:
        return "a table"
    if tp is type(None):
        return "unset"
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(where: str, tp: Any, value: Any) -> Any:
    """Check C{value} against the annotation C{tp}; return it (tuples for lists)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(where, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {_type_name(tp)}, not {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where} must be unset")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(f"{where}[{i}]", item, v) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, not {value!r}")
        _, vt = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(f"{where}.{k}", vt, v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, not {value!r}")
        return build(tp, value, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config type {tp!r} at {where}")
    raise ConfigError(f"{where} must be {_type_name(tp)}, not {value!r}")


def build(cls: type[T], table: dict[str, Any], where: str) -> T:
    """
    Build the dataclass C{cls} from the TOML table C{table}.

    @param where: the dotted name of the table, used in error messages.
    @raise ConfigError: on an unknown key, a wrongly typed value, or when the
        dataclass's C{validate()} method raises L{ConfigError}.
    """
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
    fields.update({f.name: f for f in dataclasses.fields(cls)})
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        field = fields.get(key)
        if field is None:
            known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
            name = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown setting {name} (known settings here: {known})")
        name = f"{where}.{field.name}" if where else field.name
        kwargs[field.name] = _coerce(name, hints[field.name], value)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where or 'config'} is incomplete: {e}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj  # type: ignore[return-value]


def replace(obj: T, **changes: Any) -> T:
    """C{dataclasses.replace} followed by the dataclass's own validation."""
    new = dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    validate = getattr(new, "validate", None)
    if validate is not None:
        validate()
    return new
