"""Where a protocol's recipe names point: the one place bench resolves recipes.

A protocol names recipes (``digits/kd``, or a folder ``cifar100/{pair}``) instead of
restating their terms. A name is looked up under the recipes root (the shipped
recipes); a value ending in ``.yaml`` is a file path, looked up next to the protocol
first, then in the current folder.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kdlab.errors import ConfigError, did_you_mean

YAML = (".yaml", ".yml")


def recipes_root() -> Path:
    """The folder of shipped recipes: package data once installed, else the checkout's."""
    packaged = Path(str(resources.files("kdlab"))) / "recipes"
    if packaged.is_dir():
        return packaged
    # A source checkout (editable install): <repo>/src/kdlab/bench/recipes.py
    checkout = Path(__file__).resolve().parents[3] / "configs"
    if checkout.is_dir():
        return checkout
    return Path("configs")


def is_path(ref: str) -> bool:
    return ref.endswith(YAML) or Path(ref).is_absolute()


def _near(ref: str, base_dir: Path | None) -> Path | None:
    p = Path(ref)
    for cand in [p] if p.is_absolute() else [*([base_dir / p] if base_dir else []), p]:
        if cand.exists():
            return cand
    return None


def recipe_path(ref: str, base_dir: Path | None = None) -> Path:
    """The file of a recipe name (``digits/kd``) or path (``my/kd.yaml``)."""
    if is_path(ref):
        found = _near(ref, base_dir)
        if found is None or not found.is_file():
            where = f"next to the protocol in {str(base_dir)!r} and " if base_dir else ""
            raise ConfigError(
                f"recipe file {ref!r} not found (looked {where}in the current folder)"
            )
        return found
    root = recipes_root()
    path = root / f"{ref}.yaml"
    if path.is_file():
        return path
    folder = path.parent
    known = (
        sorted(str(p.relative_to(root))[:-5] for p in folder.glob("*.yaml"))
        if folder.is_dir()
        else []
    )
    if not known:
        known = [str(p.relative_to(root)) for p in sorted(root.iterdir()) if p.is_dir()]
    raise ConfigError(f"unknown recipe {ref!r} (in {str(root)!r}); {did_you_mean(ref, known)}")


def recipe_folder(ref: str, base_dir: Path | None = None) -> Path:
    """A folder of recipes by name (``digits``, under the recipes root) or path."""
    root = recipes_root()
    found = root / ref if (root / ref).is_dir() else _near(ref, base_dir)
    if found is None or not found.is_dir():
        known = [str(p.relative_to(root)) for p in sorted(root.glob("*")) if p.is_dir()]
        raise ConfigError(f"unknown recipe folder {ref!r}; {did_you_mean(ref, known)}")
    return found
