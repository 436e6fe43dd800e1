"""Find plugins through entry-point groups: backends (`harness.backends`) and scenarios
(`harness.scenarios`).

The core knows no backend or scenario by name. When the project runs from a source tree
that was never pip-installed (our GPU test machine has no network and no install step),
the same entry points are read from the tree's pyproject.toml, so there is still exactly
one list of built-in plugins.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import import_module, metadata
from pathlib import Path
import tomllib

BACKENDS = "harness.backends"
SCENARIOS = "harness.scenarios"
SOURCE_ROOT = Path(__file__).resolve().parent.parent


class RegistryError(LookupError):
    pass


@lru_cache(maxsize=None)
def entry_points(group: str) -> dict[str, str]:
    """name -> "module:Class" for every plugin registered in `group`."""
    found: dict[str, str] = {}
    pyproject = SOURCE_ROOT / "pyproject.toml"
    if pyproject.exists():  # running from the source tree: its own list wins for its own names
        found.update(tomllib.loads(pyproject.read_text()).get("project", {}).get("entry-points", {}).get(group, {}))
    for ep in metadata.entry_points(group=group):  # then third-party plugins, in install order
        found.setdefault(ep.name, ep.value)
    return found


def _load(group: str, what: str, name: str):
    eps = entry_points(group)
    if name not in eps:
        raise RegistryError(f"unknown {what} {name!r}; registered: {', '.join(sorted(eps)) or 'none'}")
    module, _, attr = eps[name].partition(":")
    try:
        return getattr(import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise RegistryError(f"{what} {name!r} ({eps[name]}) cannot be imported: {e}") from None


def backend_entry_points() -> dict[str, str]:
    return entry_points(BACKENDS)


def load_backend_class(name: str):
    return _load(BACKENDS, "backend", name)


def scenario_entry_points() -> dict[str, str]:
    return entry_points(SCENARIOS)


def load_scenario_class(name: str):
    return _load(SCENARIOS, "scenario", name)
