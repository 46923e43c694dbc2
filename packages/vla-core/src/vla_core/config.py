"""Dataclass configs with strict dict / JSON round trips.

A component's config is a frozen, keyword-only dataclass that subclasses :class:`ComponentConfig`.
``from_dict`` rejects unknown fields (naming them, the valid ones and the closest match) and
values of the wrong type; ``to_dict`` gives plain JSON-able data that ``from_dict`` reads back.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union

from typing_extensions import Self

from vla_core.errors import ConfigError, closest

C = TypeVar("C", bound="ComponentConfig")


def _type_ok(value: Any, annotation: Any) -> bool:
    """Loose runtime check of a JSON-ish value against a type annotation."""
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is object:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    if origin in (tuple, list, typing.Sequence) or annotation in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(annotation)
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(args) == len(value) and all(_type_ok(v, a) for v, a in zip(value, args))
        return all(_type_ok(v, args[0]) for v in value)
    if origin in (dict, Mapping) or annotation is dict:
        return isinstance(value, Mapping)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _coerce(value: Any, annotation: Any) -> Any:
    """Turn JSON lists into tuples where the annotation asks for a tuple (recursively)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None) and _type_ok(value, arg):
                return _coerce(value, arg)
        return value
    if (origin is tuple or annotation is tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(annotation)
        if args and not (len(args) == 2 and args[1] is Ellipsis):
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner) for v in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComponentConfig:
    """Base of every component config: architecture only, no device or optimizer settings."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build from a plain mapping; unknown fields and wrong types raise :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}: expected a mapping of fields, received {type(data).__name__}")
        names = cls.field_names()
        hints = typing.get_type_hints(cls)
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"{cls.__name__}: unknown field {key!r}.{closest(key, names)} Valid fields: {', '.join(names)}"
                )
        kwargs = {}
        for key, value in data.items():
            annotation = hints.get(key, Any)
            if not _type_ok(value, annotation):
                raise ConfigError(
                    f"{cls.__name__}.{key}: expected {_type_name(annotation)}, received {value!r} "
                    f"({type(value).__name__})"
                )
            kwargs[key] = _coerce(value, annotation)
        try:
            return cls(**kwargs)
        except TypeError as err:  # a required field is missing
            raise ConfigError(f"{cls.__name__}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (validated like ``from_dict``)."""
        return type(self).from_dict({**self.to_dict(), **changes})


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_choice(owner: str, field: str, value: Any, choices: typing.Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{owner}.{field}: expected one of {choices}, received {value!r}")


def check_positive(owner: str, **values: float) -> None:
    """Raise :class:`ConfigError` naming the first field whose value is not > 0."""
    for field, value in values.items():
        if value is None or value <= 0:
            raise ConfigError(f"{owner}.{field}: expected a positive number, received {value!r}")


DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def resolve_dtype(value: Any, where: str) -> Any:
    """A floating ``torch.dtype`` from a dtype or its name (``"bfloat16"``, ``"bf16"``, ``"float32"``,
    ``"fp16"``, ...); anything else raises :class:`ConfigError` naming ``where``."""
    import torch

    if isinstance(value, torch.dtype) and value in (torch.float32, torch.bfloat16, torch.float16):
        return value
    name = value.removeprefix("torch.") if isinstance(value, str) else None
    if name not in DTYPES:
        raise ConfigError(f"{where}: expected one of {sorted(set(DTYPES.values()))} (or torch.float32, "
                          f"torch.bfloat16, torch.float16), received {value!r}")
    return getattr(torch, DTYPES[name])
