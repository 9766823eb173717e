"""Config tables as typed data: frozen dataclasses read from TOML tables and the environment.

A field's type says how its value is read, one coercion per type (:data:`SCALARS`, unions of
them, tables); its ``metadata`` (made by :func:`key`) holds its doc and, optionally, a check
of the coerced value. A field typed as another such dataclass is a table (``[jwt]``); one
typed as a tuple of them is a list of tables (``[[jwt.issuers]]``), each entry read by the same
code and its problems named with its index (``jwt.issuers[0].issuer``). A field without a
default is required. A type with no coercion here, or a field without a doc, is a TypeError
when the schema is built (config.py builds its schema at import), never a string by accident.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any], "str | None"]
Coerce = Callable[[Any, bool], Any]  # (raw value, came from the environment) -> typed value


def key(doc: str, check: Check | None = None) -> dict[str, Any]:
    """A field's metadata: its doc, and a check returning why a coerced value is wrong."""
    return {"doc": doc, "check": check}


def _bool(value: Any, from_env: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_env and isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if from_env and isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _int(value: Any, from_env: bool) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if from_env and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise ValueError


def _str(value: Any, from_env: bool) -> str:
    if isinstance(value, str):
        return value
    raise ValueError


def _str_tuple(value: Any, from_env: bool) -> tuple[str, ...]:
    if from_env and isinstance(value, str):  # AUTHPROXY_ADMIN_USERS="alice, bob"
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ValueError


@dataclass(frozen=True, slots=True)
class Scalar:
    """A value written in one line: TOML's own type, or the text of an environment variable."""

    description: str  # completes "must be ..."
    coerces: tuple[Coerce, ...]  # a union's members, tried in order: the first that fits wins


SCALARS: Mapping[Any, Scalar] = types.MappingProxyType({
    bool: Scalar("true or false", (_bool,)),
    int: Scalar("a whole number", (_int,)),
    str: Scalar("a string", (_str,)),
    tuple[str, ...]: Scalar("a list of strings", (_str_tuple,)),
})


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    kind: Scalar | Table | TableList
    check: Check | None
    required: bool


@dataclass(frozen=True, slots=True)
class Table:
    """The keys of one dataclass, in field order."""

    cls: type[Any]
    keys: Mapping[str, Key]


@dataclass(frozen=True, slots=True)
class TableList:
    """An array of tables, each an entry of ``table``; read into a tuple."""

    table: Table


def table_of(cls: type[Any]) -> Table:
    """The schema of dataclass ``cls``. Raises TypeError for a field of a type with no
    coercion, or without a doc."""
    hints = typing.get_type_hints(cls)
    keys = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("doc") and not dataclasses.is_dataclass(hints[f.name]):
            raise TypeError(f"{cls.__name__}.{f.name}: no doc (metadata=key(doc, check))")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        keys[f.name] = Key(f.name, _kind(cls, f.name, hints[f.name]), f.metadata.get("check"),
                           required)
    return Table(cls, types.MappingProxyType(keys))


def _kind(cls: type[Any], name: str, hint: Any) -> Scalar | Table | TableList:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return table_of(hint)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if dataclasses.is_dataclass(args[0]) and isinstance(args[0], type):
            return TableList(table_of(args[0]))
    if hint in SCALARS:
        return SCALARS[hint]
    if isinstance(hint, types.UnionType) and all(arg in SCALARS for arg in args):
        members = [SCALARS[arg] for arg in args]
        return Scalar(" or ".join(m.description for m in members),
                      tuple(c for m in members for c in m.coerces))
    raise TypeError(f"{cls.__name__}.{name}: no coercion for the type {hint}: add one to "
                    "configschema.py rather than reading it as something else")


@dataclass(frozen=True, slots=True)
class Sources:
    """Where values come from besides the file, and where problems go."""

    environ: Mapping[str, str]
    flags: Mapping[str, Any]  # "section.key": raw value, from the command line; wins over all
    problems: list[str]


class _No(enum.Enum):
    ABSENT = "absent"  # set nowhere: the field's default
    INVALID = "invalid"  # set, wrong, and already among the problems


def read_table(table: Table, raw: Any, where: str, env_prefix: str | None,
               sources: Sources) -> Any | None:
    """An instance of ``table.cls`` from the TOML table ``raw`` (None: absent), environment
    variables ``env_prefix + KEY`` (None: none) and ``sources.flags``. Each problem is added to
    ``sources.problems``, named by its path (``where.key``) or variable, and its key left at
    its default; None if a required key is missing or wrong."""
    if raw is None:
        raw = {}
    elif not isinstance(raw, dict):
        sources.problems.append(f"{where}: must be a table")
        raw = {}
    for name in raw:
        if name not in table.keys:
            sources.problems.append(
                f"{where}.{name}: unknown key" if where else f"unknown section [{name}]")
    # The root's prefix, AUTHPROXY_, is shared with variables that are not keys
    # (AUTHPROXY_CONFIG, Kubernetes' AUTHPROXY_SERVICE_HOST): unknown names count below it.
    if env_prefix is not None and where:
        _unknown_variables(table, where, env_prefix, sources)
    values = {}
    complete = True
    for k in table.keys.values():
        path = f"{where}.{k.name}" if where else k.name
        env_name = None if env_prefix is None else env_prefix + k.name.upper()
        value = _read_key(k, raw.get(k.name), path, env_name, sources)
        if value is _No.ABSENT and k.required:
            sources.problems.append(f"{path}: required")
        if isinstance(value, _No):
            complete = complete and not k.required
        else:
            values[k.name] = value
    return table.cls(**values) if complete else None


def _unknown_variables(table: Table, where: str, env_prefix: str, sources: Sources) -> None:
    tables = tuple(f"{k.name.upper()}_" for k in table.keys.values() if isinstance(k.kind, Table))
    for env_name in sources.environ:
        rest = env_name[len(env_prefix):]
        if (env_name.startswith(env_prefix) and rest.lower() not in table.keys
                and not rest.startswith(tables)):
            sources.problems.append(f"{env_name}: unknown key {where}.{rest}")


def _read_key(k: Key, raw: Any, path: str, env_name: str | None, sources: Sources) -> Any:
    """The value of one key, or why there is none (_No)."""
    if isinstance(k.kind, Table):
        prefix = None if env_name is None else env_name + "_"
        value = read_table(k.kind, raw, path, prefix, sources)
        return _No.INVALID if value is None else value
    where, from_env = path, False
    if env_name is not None and env_name in sources.environ:
        raw, where, from_env = sources.environ[env_name], env_name, True
    if path in sources.flags:
        raw, where, from_env = sources.flags[path], path, False
    if raw is None:
        return _No.ABSENT
    if isinstance(k.kind, TableList):
        value = _read_entries(k.kind, raw, path, where if from_env else None, sources)
    else:
        value = _coerce(k.kind, raw, from_env)
        if value is _No.INVALID:
            sources.problems.append(f"{where}: must be {k.kind.description}")
    if isinstance(value, _No):
        return value
    message = k.check(value) if k.check else None
    if message:
        sources.problems.append(f"{where}: {message}")
        return _No.INVALID
    return value


def _coerce(kind: Scalar, raw: Any, from_env: bool) -> Any:
    for coerce in kind.coerces:
        try:
            return coerce(raw, from_env)
        except ValueError:
            continue
    return _No.INVALID


def _read_entries(kind: TableList, raw: Any, where: str, env_name: str | None,
                  sources: Sources) -> Any:
    if env_name is not None or not isinstance(raw, list):
        sources.problems.append(f"{env_name or where}: must be a list of tables, written "
                                f"[[{where}]] in the config file")
        return _No.INVALID
    entries = [read_table(kind.table, item, f"{where}[{index}]", None, sources)
               for index, item in enumerate(raw)]
    if any(entry is None for entry in entries):
        # Not the entries that can be built: the cross-checks would name them by the wrong
        # index. They are checked once every entry can be built.
        return _No.INVALID
    return tuple(entries)
