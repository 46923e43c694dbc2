"""Name -> component registries, filled by decorators and by entry points.

Packages advertise components in their metadata (entry-point groups ``vla.backbones``,
``vla.heads``, ``vla.projectors``, and ``vla.policies`` for whole policies; value ``"module:Class"``), so listing names imports nothing
and a plugin package is found without anyone importing it first. A class registered with the
decorator must declare ``config_class`` (a :class:`~vla_core.config.ComponentConfig`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, Generic, TypeVar

from vla_core.config import ComponentConfig
from vla_core.errors import ConfigError, MissingExtraError, UnknownComponentError, closest

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """A registry of one kind of component (``"backbone"``, ``"head"``, ``"projector"``)."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._classes: dict[str, type] = {}

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        return {ep.name: ep for ep in metadata.entry_points(group=self.group)}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register ``cls`` under ``name`` (duplicates raise)."""

        def decorate(cls: T) -> T:
            config_class = getattr(cls, "config_class", None)
            if not (isinstance(config_class, type) and issubclass(config_class, ComponentConfig)):
                raise TypeError(f"{cls.__qualname__} must declare `config_class`, a ComponentConfig subclass")
            existing = self._classes.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered to {existing.__module__}.{existing.__qualname__}"
                )
            self._classes[name] = cls
            cls.registered_name = name
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        self._classes.pop(name, None)

    def names(self) -> list[str]:
        """All names, registered or advertised by an installed package (imports nothing)."""
        return sorted(set(self._classes) | set(self._entry_points()))

    def __contains__(self, name: str) -> bool:
        return name in self._classes or name in self._entry_points()

    def get(self, name: str) -> type:
        """The class registered as ``name``, importing its package through the entry point if needed."""
        if name in self._classes:
            return self._classes[name]
        ep = self._entry_points().get(name)
        if ep is None:
            names = self.names()
            raise UnknownComponentError(
                f"unknown {self.kind} type {name!r}.{closest(name, names)} Registered {self.kind}s: "
                f"{', '.join(names) or '(none)'}. A component from another package is found once that "
                f"package is installed (it advertises `{self.group}` entry points)."
            )
        dist = getattr(ep.dist, "name", None) or ep.value.split(":")[0].split(".")[0]
        try:
            cls = ep.load()
        except ImportError as err:
            raise MissingExtraError(
                f"{self.kind} {name!r} comes from {ep.value!r}, which failed to import ({err}); install "
                f"its dependencies, e.g. `pip install {dist}` with the extra its README names."
            ) from err
        registered = self._classes.get(name)
        if registered is None:
            self.register(name)(cls)
        elif registered is not cls:
            raise ValueError(f"entry point {name!r} -> {ep.value} disagrees with the registered class {registered}")
        return cls

    def config_class(self, name: str) -> type[ComponentConfig]:
        return self.get(name).config_class

    def parse(self, spec: Mapping[str, Any]) -> tuple[type, ComponentConfig]:
        """Split ``{"type": name, **fields}`` into the class and its validated config."""
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise ConfigError(f"a {self.kind} spec is a mapping with a 'type' key, received {spec!r}")
        fields = {k: v for k, v in spec.items() if k != "type"}
        cls = self.get(spec["type"])
        return cls, cls.config_class.from_dict(fields)

    def build(self, spec: Mapping[str, Any], **overrides: Any) -> Any:
        """Instantiate from ``{"type": name, **fields}`` (``overrides`` are extra fields)."""
        cls, config = self.parse({**spec, **overrides})
        return cls(config)


BACKBONES: Registry = Registry("backbone", "vla.backbones")
HEADS: Registry = Registry("head", "vla.heads")
PROJECTORS: Registry = Registry("projector", "vla.projectors")
POLICIES: Registry = Registry("policy", "vla.policies")


def build_backbone(spec: Mapping[str, Any], **overrides: Any):
    """Build a registered backbone from ``{"type": name, **config_fields}``."""
    return BACKBONES.build(spec, **overrides)


def build_head(spec: Mapping[str, Any], **overrides: Any):
    """Build a registered action head from ``{"type": name, **config_fields}``."""
    return HEADS.build(spec, **overrides)


def build_projector(spec: Mapping[str, Any], **overrides: Any):
    """Build a registered projector from ``{"type": name, **config_fields}``."""
    return PROJECTORS.build(spec, **overrides)
