"""Name -> object registries (models, methods, datasets, views, ...).

Names resolve only through registries: configs never carry import paths, so a recipe
can never make kdlab import arbitrary modules. Code from outside kdlab joins a registry
in one of two explicit ways (see ``docs/plugins.md``):

- an installed package declares Python entry points in the registry's group
  (``kdlab.models``, ``kdlab.methods``, ``kdlab.datasets``, ``kdlab.views``); they are
  loaded lazily, the first time a lookup misses or the registry is listed;
- a local file is run with ``kdlab --plugin FILE.py`` or a recipe's ``plugins:`` key
  (:mod:`kdlab.plugins`).

A registry may also resolve a whole family of names by prefix (``hf:...``): the
family's resolver turns the rest of the name into an object.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from types import ModuleType
from typing import Any, Generic, TypeVar

from kdlab.errors import RegistryError, did_you_mean

T = TypeVar("T")

# The entry-point group of each of kdlab's registries, by the registry's kind.
ENTRY_POINT_GROUPS = {
    "model": "kdlab.models",
    "method": "kdlab.methods",
    "dataset": "kdlab.datasets",
    "view": "kdlab.views",
}


class Registry(Generic[T]):
    """A named collection with did-you-mean errors and no silent overwrites.

    Args:
        kind: what it holds ("model"), used in messages.
        group: the entry-point group whose entries join it; default: the group of
            ``kind`` in :data:`ENTRY_POINT_GROUPS` (none for other kinds).
    """

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group if group is not None else ENTRY_POINT_GROUPS.get(kind)
        self._items: dict[str, T] = {}
        self._prefixes: dict[str, Callable[[str], T]] = {}
        self._seen: set[tuple[str, str, str]] = set()  # entry points already loaded
        self._broken: dict[str, str] = {}  # entry-point name -> why it failed to load

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("resnet20")`` (default name: ``obj.__name__``)."""

        def deco(obj: T) -> T:
            self.add(name or obj.__name__, obj)  # type: ignore[attr-defined]
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def add_prefix(self, prefix: str, resolve: Callable[[str], T]) -> None:
        """Resolve every name ``prefix:REST`` with ``resolve(REST)`` (e.g. ``hf:``)."""
        if prefix in self._prefixes:
            raise RegistryError(f"{self.kind} prefix {prefix!r}: is already registered")
        self._prefixes[prefix] = resolve

    def get(self, name: str) -> T:
        head, sep, rest = name.partition(":")
        if sep and head in self._prefixes:
            return self._prefixes[head](rest)
        if name not in self._items:
            self.load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            if name in self._broken:
                raise RegistryError(self._broken[name]) from None
            raise RegistryError(
                f"unknown {self.kind} {name!r}; {did_you_mean(name, self._items)}"
                + self._plugin_hint()
            ) from None

    def _plugin_hint(self) -> str:
        if self.group is None:
            return ""
        return (
            f" (your own {self.kind}s join through an installed package's entry point in "
            f"group {self.group!r}, or a file given with --plugin or a recipe's 'plugins:')"
        )

    # --- entry points ----------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Load this registry's entry points not loaded yet (cheap when there are none).

        An entry point names a module (importing it registers what it defines, e.g. with
        ``@register_model``) or an object, registered under the entry point's name unless
        importing it already did. One that fails to load is reported by a warning and
        by the error of a lookup of its name; the others still load.
        """
        if self.group is None:
            return
        for ep in _entry_points(self.group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            key = (dist, ep.name, ep.value)
            if key in self._seen:
                continue
            self._seen.add(key)
            try:
                obj = ep.load()
                if not isinstance(obj, ModuleType) and self._items.get(ep.name) is not obj:
                    self.add(ep.name, obj)
            except Exception as err:  # a broken plugin must not break kdlab's own names
                why = (
                    f"{self.kind} {ep.name!r} from package {dist!r} (entry point "
                    f"{ep.name} = {ep.value} in group {self.group!r}) failed to load: "
                    f"{type(err).__name__}: {err}"
                )
                self._broken[ep.name] = why
                warnings.warn(why, stacklevel=3)

    # --- listing (loads entry points first) ------------------------------------------------
    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self.load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load_entry_points()
        return len(self._items)

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        self.load_entry_points()
        return sorted(self._items.items())


def _entry_points(group: str) -> list[Any]:
    """The installed entry points of ``group`` (read afresh: sys.path may have grown)."""
    return list(metadata.entry_points(group=group))


def import_submodules(package: str, path: Iterable[str], skip: Iterable[str] = ("base",)) -> None:
    """Import every module of a registry's package (``methods``, ``views``, ...) so that
    each registers itself: adding a method, view or dataset is adding one file."""
    skipped = set(skip)
    for info in pkgutil.iter_modules(path):
        if info.name not in skipped:
            importlib.import_module(f"{package}.{info.name}")
