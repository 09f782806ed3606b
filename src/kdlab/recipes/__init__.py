"""Ready recipes, shipped as package data, and the one way to find them.

``find("digits/kd")`` is ``<package>/recipes/digits/kd.yaml`` wherever kdlab is installed;
an existing path is returned as it is, and the documented ``configs/...`` paths (a
symlink to this folder in the repository) resolve to the shipped files from any
folder. Layout: ``<dataset>/<method>.yaml`` and ``<dataset>/<teacher>-<student>/<method>.yaml``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kdlab.errors import ConfigError, did_you_mean

ROOT = Path(str(resources.files(__name__)))
_PREFIXES = ("configs/", "./configs/")


def _shipped(name: str) -> Path:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return ROOT / name


def names(under: str = "") -> list[str]:
    """Shipped recipe names (``digits/kd``, ...), optionally only those under a folder."""
    base = _shipped(under) if under else ROOT
    return sorted(str(p.relative_to(ROOT).with_suffix("")) for p in base.rglob("*.yaml"))


def find(name: str | Path) -> Path:
    """A recipe file: an existing path, or a shipped recipe by name (``digits/kd``,
    ``digits/kd.yaml``, ``configs/digits/kd.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    text = str(name)
    shipped = _shipped(text if text.endswith((".yaml", ".yml")) else f"{text}.yaml")
    if shipped.is_file():
        return shipped
    if path.suffix in (".yaml", ".yml") and path.parts[0] not in ("configs", "."):
        raise ConfigError(f"config file {text!r} does not exist")
    raise ConfigError(
        f"no recipe {text!r}: not a file, nor a shipped recipe; "
        f"{did_you_mean(str(_shipped(text).relative_to(ROOT)), names())}"
    )


def folder(name: str | Path) -> Path:
    """A folder of recipes: an existing folder, or a shipped one (``digits``,
    ``cifar100/resnet56-resnet20``, ``configs/fashion``)."""
    path = Path(name)
    if path.is_dir():
        return path
    shipped = _shipped(str(name))
    if shipped.is_dir():
        return shipped
    known = sorted({str(Path(n).parent) for n in names()})
    raise ConfigError(
        f"no recipe folder {str(name)!r}; {did_you_mean(str(shipped.relative_to(ROOT)), known)}"
    )


def resolve(name: str | Path) -> Path | None:
    """:func:`find` or :func:`folder` of ``name``, or None when it is neither."""
    for fn in (find, folder):
        try:
            return fn(name)
        except ConfigError:
            continue
    return None
