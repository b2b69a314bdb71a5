"""Flags and LAMINA_* variables derived from a settings model: one name per setting.

A field `max_num_seqs` is the flag `--max-num-seqs` and the variable `LAMINA_MAX_NUM_SEQS`. A
nested model's fields take its name as a prefix (EngineConfig.speed's `prefill_layers` is
`--speed-prefill-layers` / `LAMINA_SPEED_PREFILL_LAYERS`) unless the field is marked
`flatten` (ServeConfig.engine: engine settings keep their own names). Text from a flag and
from a variable goes through the same parser, then the model validates it, so adding a field
to EngineConfig or ServeConfig is the whole change that adds a setting. Secrets (SecretStr) are
variables only: a flag's value is visible to anyone who can list processes.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ENV_PREFIX = "LAMINA_"
FLATTEN = {"flatten": True}  # Field(json_schema_extra=FLATTEN): nested fields keep their names
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SettingsError(ValueError):
    """A flag or LAMINA_* value that is malformed or out of range; says which and why."""


@dataclass(frozen=True)
class Setting:
    """One leaf field of a settings model, and the names it goes by outside Python."""

    path: tuple[str, ...]  # field names from the root model, e.g. ("engine", "max_num_seqs")
    name: str  # the flat name: "max_num_seqs", "speed_prefill_layers"
    info: FieldInfo

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def kinds(self) -> tuple[Any, ...]:
        """The field's types without None: (int,), (int, float), (Literal[...],)."""
        return _members(self.info.annotation)

    @property
    def choices(self) -> tuple[str, ...] | None:
        kind = self.kinds[0] if len(self.kinds) == 1 else None
        return typing.get_args(kind) if typing.get_origin(kind) is Literal else None

    @property
    def is_bool(self) -> bool:
        return self.kinds == (bool,)

    def parse(self, text: str) -> Any:
        """The value of `text` as a flag or variable gives it; ValueError when malformed."""
        raw = text.strip()
        if self.is_bool:
            if raw.lower() in _TRUE + _FALSE:
                return raw.lower() in _TRUE
            raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}, got {text!r}")
        numbers = [k for k in (int, float) if k in self.kinds]
        for kind in numbers:  # int before float: "24" is a count, "0.75" and "1.0" fractions
            try:
                return kind(raw)
            except ValueError:
                continue
        if numbers and len(numbers) == len(self.kinds):
            what = " or ".join(k.__name__ for k in numbers)
            raise ValueError(f"expected {'an' if what[0] == 'i' else 'a'} {what}, got {text!r}")
        return raw  # str, SecretStr, Literal: the model checks the value

    def describe(self, with_env: bool = True) -> str:
        """Help text: the description, the variable (where read) and the default."""
        default = self.info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel) or default is PydanticUndefined:
            default = None
        notes = ([f"env {self.env}"] if with_env else []) + (
            [] if default is None else [f"default {default}"]
        )
        text = (self.info.description or "").rstrip(".")
        if not notes:
            return text
        return f"{text} ({'; '.join(notes)})" if text else "; ".join(notes)


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for kind in _members(annotation):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
    return None


def settings(model: type[BaseModel], _path: tuple[str, ...] = (), _prefix="") -> list[Setting]:
    """Every leaf setting of `model`, nested models expanded, in field order."""
    out: list[Setting] = []
    for field, info in model.model_fields.items():
        inner = _nested_model(info.annotation)
        if inner is None:
            out.append(Setting(_path + (field,), _prefix + field, info))
            continue
        flatten = isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("flatten")
        out += settings(inner, _path + (field,), _prefix if flatten else f"{_prefix}{field}_")
    names = [s.name for s in out]
    clash = {n for n in names if names.count(n) > 1}
    if clash:
        raise TypeError(f"{model.__name__}: settings {sorted(clash)} would share a flag")
    return out


def add_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    exclude: Iterable[str] = (),
    aliases: Mapping[str, Iterable[str]] | None = None,
    reads_env: bool = True,
) -> None:
    """One flag per setting of `model` (defaults None: unset flags leave the variable or the
    model's default in force). `aliases`: older flag names still accepted for a setting;
    `reads_env`: whether the command reads LAMINA_* variables (its help names them)."""
    aliases = aliases or {}
    skip = set(exclude)
    for s in settings(model):
        if s.name in skip or SecretStr in s.kinds:  # secrets stay off argv (`ps` shows it)
            continue
        names = [s.flag, *aliases.get(s.name, ())]
        if s.is_bool:
            parser.add_argument(
                *names,
                dest=s.name,
                action=argparse.BooleanOptionalAction,
                help=s.describe(reads_env),
            )
            continue
        parser.add_argument(
            *names,
            dest=s.name,
            type=_flag_type(s),
            choices=s.choices,
            default=None,
            help=s.describe(reads_env),
        )


def _flag_type(s: Setting):
    def parse(text: str) -> Any:
        try:
            return s.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = s.name  # argparse names it in "invalid <name> value"
    return parse


def build(
    model: type[BaseModel],
    args: argparse.Namespace | None = None,
    env: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    exclude: Iterable[str] = (),
):
    """`model` from its defaults, then LAMINA_* variables in `env`, then the flags in `args`
    that were given (but not the settings in `exclude`, whose flags mean something else).
    Raises SettingsError naming the flag and variable of a bad value."""
    values: dict[str, Any] = {}
    table = settings(model)
    for s in table:
        if s.name in exclude:
            continue
        if defaults and s.name in defaults:
            _put(values, s.path, defaults[s.name])
        raw = (env or {}).get(s.env)
        if raw is not None and raw != "":
            try:
                _put(values, s.path, s.parse(raw))
            except ValueError as exc:
                raise SettingsError(f"{s.env}={raw!r}: {exc}") from None
        given = getattr(args, s.name, None) if args is not None else None
        if given is not None:
            _put(values, s.path, given)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(explain(exc, table)) from None


def _put(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        values = values.setdefault(key, {})
    values[path[-1]] = value


def explain(exc: ValidationError, table: list[Setting]) -> str:
    """One line per problem, naming the flag and variable of the setting at fault."""
    by_path = {s.path: s for s in table}
    lines = []
    for err in exc.errors():
        s = by_path.get(tuple(str(p) for p in err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if s is None:  # a rule over several settings: its message names them
            lines.append(msg)
            continue
        shown = err["type"] != "missing" and SecretStr not in s.kinds and "input" in err
        shown = shown and repr(err["input"]) not in msg
        lines.append(f"{s.flag} / {s.env}: {msg}" + (f" (got {err['input']!r})" if shown else ""))
    return "; ".join(lines)


def env_names(model: type[BaseModel]) -> set[str]:
    return {s.env for s in settings(model)}
