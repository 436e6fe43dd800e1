"""Find backends through the `harness.backends` entry-point group.

The core knows no backend by name. When the project runs from a source tree that was
never pip-installed (our H100 test machine has no network and no install step), the
same entry points are read from the tree's pyproject.toml, so there is still exactly
one list of built-in backends.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import import_module, metadata
from pathlib import Path
import tomllib

GROUP = "harness.backends"
SOURCE_ROOT = Path(__file__).resolve().parent.parent


class RegistryError(LookupError):
    pass


@lru_cache(maxsize=1)
def backend_entry_points() -> dict[str, str]:
    """name -> "module:Class" for every registered backend."""
    found = {ep.name: ep.value for ep in metadata.entry_points(group=GROUP)}
    pyproject = SOURCE_ROOT / "pyproject.toml"
    if pyproject.exists():  # running from the source tree: its own list wins for its own names
        table = tomllib.loads(pyproject.read_text()).get("project", {}).get("entry-points", {}).get(GROUP, {})
        found.update(table)
    return found


def load_backend_class(name: str):
    eps = backend_entry_points()
    if name not in eps:
        raise RegistryError(f"unknown backend {name!r}; registered: {', '.join(sorted(eps)) or 'none'}")
    module, _, attr = eps[name].partition(":")
    try:
        return getattr(import_module(module), attr)
    except ImportError as e:
        raise RegistryError(f"backend {name!r} ({eps[name]}) cannot be imported: {e}") from None
