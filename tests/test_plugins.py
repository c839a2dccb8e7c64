"""The plugin registries: filled by their packages on first read, safe to read from many threads at once."""

from __future__ import annotations

import sys
import threading
import types

import pytest

from hpcflare.errors import ConfigError
from hpcflare.plugins import SITE_SIDES, STRATEGIES, Registry


def test_builtin_registries_are_filled_by_their_packages():
    assert {"fedavg", "swarm", "scaffold"} <= set(STRATEGIES)
    assert SITE_SIDES["swarm"].__name__ == "SwarmSide"
    with pytest.raises(ConfigError, match="unknown strategy 'nope'; available: .*fedavg"):
        STRATEGIES.get_or_fail("nope")


def test_a_name_is_registered_once():
    registry: Registry[int] = Registry("thing", ())
    registry.register("a", 1)
    registry.register("a", 1)  # the same entry again (a module imported twice) is fine
    with pytest.raises(ValueError, match="thing 'a' is registered already"):
        registry.register("a", 2)


def test_threads_reading_during_the_first_load_see_every_entry(monkeypatch):
    """Sites of one client rank start in threads together: none may see the registry half filled."""
    registry: Registry[int] = Registry("slow thing", ("hpcflare_test_slow_plugin",))
    started = threading.Event()

    class SlowPlugin(types.ModuleType):
        def __init__(self) -> None:
            super().__init__("hpcflare_test_slow_plugin")
            started.set()
            threading.Event().wait(0.3)  # importing takes a while; the other threads must wait for it
            registry.register("late", 42)

    def fake_import(name: str) -> types.ModuleType:
        module = sys.modules.get(name)
        if module is None:
            module = sys.modules[name] = SlowPlugin()
        return module

    monkeypatch.setattr("hpcflare.plugins.importlib.import_module", fake_import)
    monkeypatch.delitem(sys.modules, "hpcflare_test_slow_plugin", raising=False)
    seen: list[int | None] = []
    loader = threading.Thread(target=lambda: seen.append(registry.get("late")))
    loader.start()
    started.wait(5)
    readers = [threading.Thread(target=lambda: seen.append(registry.get("late"))) for _ in range(4)]
    for t in readers:
        t.start()
    for t in [loader, *readers]:
        t.join(10)
    assert seen == [42] * 5


def test_a_failed_load_is_tried_again(monkeypatch):
    registry: Registry[int] = Registry("thing", ("hpcflare_test_missing_plugin",))
    with pytest.raises(ModuleNotFoundError):
        registry.get("x")
    monkeypatch.setattr("hpcflare.plugins.importlib.import_module", lambda name: registry.register("x", 1))
    assert registry.get("x") == 1
