"""Local plugin files: your own models, methods, datasets and views from a ``.py`` file.

``kdlab --plugin my_models.py train recipe.yaml`` or a recipe's ``plugins: [my_models.py]``
runs each file once, as a module, before names resolve; the file registers what it
defines (``@register_model("my_net")``, a ``Term`` subclass, ``@DATASETS.register``,
``@VIEWS.register``). Recipes still name things only through the registries.

Running a plugin runs its code with your rights, like ``python my_models.py``: list
only files you wrote or read (``docs/security.md``). Installed packages join through
entry points instead (:mod:`kdlab.registry`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from kdlab.errors import ConfigError, KdlabError

_LOADED: dict[Path, ModuleType] = {}  # resolved path -> its module, so each runs once


def load_plugin(path: str | Path) -> ModuleType:
    """Run the Python file ``path`` as a module (once per process) and return it.

    Relative paths are taken from the current directory. A missing file, a file that is
    not ``.py`` and an error while running it are :class:`ConfigError` naming the file.
    """
    resolved = Path(path).expanduser().resolve()
    if resolved in _LOADED:
        return _LOADED[resolved]
    if resolved.suffix != ".py":
        raise ConfigError(f"plugin {str(path)!r} must be a Python file ending in .py")
    if not resolved.is_file():
        raise ConfigError(f"plugin file {str(path)!r} does not exist (resolved: {resolved})")
    # A module name unique per path: two plugins both called models.py must not clash,
    # and the name stays stable so pickling objects the plugin defines works in-process.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"kdlab_plugin_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:  # pragma: no cover - .py files always get one
        raise ConfigError(f"plugin {str(path)!r} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except KdlabError as err:  # e.g. a name registered twice: keep kdlab's own message
        del sys.modules[name]
        raise ConfigError(f"plugin {str(path)!r}: {err}") from err
    except Exception as err:
        del sys.modules[name]
        raise ConfigError(
            f"plugin {str(path)!r} failed while running: {type(err).__name__}: {err}"
        ) from err
    _LOADED[resolved] = module
    return module


def load_plugins(paths: Iterable[str | Path]) -> list[str]:
    """Load each plugin file; returns their absolute paths (what a run folder records)."""
    return [str(load_plugin(p).__file__) for p in paths]
