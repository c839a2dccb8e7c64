"""Registries that plugin packages fill, so the job model can validate a config without importing them.

``job.py`` sits below the strategies, privacy schemes and filters in the package layers
(``tests/test_architecture.py``); it reaches them only through these registries:

- :data:`STRATEGIES`: strategy name -> strategy class (filled by :mod:`hpcflare.strategy`);
- :data:`CONFIG_CHECKS`: job.yaml key -> ``check(config)`` raising ``ConfigError`` (filters, privacy);
- :data:`STRATEGY_WRAPPERS`: job.yaml key -> ``wrap(strategy, config)`` (privacy wraps FedAvg in SecAgg/HE);
- :data:`SITE_SIDES`: strategy name -> ``factory(agent)`` of its site hooks (swarm), handed to the agent by
  the role that builds it.

A registry imports the built-in package that fills it the first time it is read, then every installed
distribution's ``hpcflare.plugins`` entry point (a module that registers more entries when imported).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from hpcflare.errors import ConfigError

T = TypeVar("T")

ENTRY_POINT_GROUP = "hpcflare.plugins"
_entry_points_loaded = False
_load_lock = threading.RLock()


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as exc:  # a broken third-party plugin must name itself, not break every job
            raise ConfigError(
                f"hpcflare plugin {point.name!r} ({point.value}) failed to load: {exc}; fix or uninstall it"
            ) from None


class Registry(Mapping[str, T], Generic[T]):
    """A name -> entry mapping of one kind; reading it first imports the package(s) that fill it."""

    def __init__(self, kind: str, filled_by: tuple[str, ...]) -> None:
        self.kind = kind
        self.filled_by = filled_by
        self._entries: dict[str, T] = {}
        self._ready = False
        self._loading = False

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a second, different entry under the same name is refused."""
        if self._entries.get(name, entry) is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered already ({self._entries[name]!r})")
        self._entries[name] = entry
        return entry

    def _load(self) -> dict[str, T]:
        """The entries, once the filling packages are imported. Other threads wait for a load in progress; the
        loading thread itself (a filling package reading its own registry) sees the entries so far."""
        if not self._ready:
            with _load_lock:
                if not self._ready and not self._loading:
                    self._loading = True
                    try:
                        for module in self.filled_by:
                            importlib.import_module(module)
                        _load_entry_points()
                        self._ready = True
                    finally:
                        self._loading = False
        return self._entries

    def __getitem__(self, name: str) -> T:
        entries = self._load()
        if name not in entries:
            raise KeyError(name)
        return entries[name]

    def get_or_fail(self, name: str) -> T:
        """The entry, or a ConfigError naming what exists."""
        entries = self._load()
        if name not in entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {sorted(entries)}")
        return entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._load()))

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"


STRATEGIES: Registry[Callable[..., Any]] = Registry("strategy", ("hpcflare.strategy",))
CONFIG_CHECKS: Registry[Callable[[Any], None]] = Registry(
    "config check", ("hpcflare.filters", "hpcflare.privacy")
)
STRATEGY_WRAPPERS: Registry[Callable[[Any, Any], Any]] = Registry("strategy wrapper", ("hpcflare.privacy",))
SITE_SIDES: Registry[Callable[[Any], Any]] = Registry("site side", ("hpcflare.runtime.swarm",))
