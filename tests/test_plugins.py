"""Your own models: plugin files (--plugin, plugins:) and installed entry points."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kdlab import cli
from kdlab.config import load_config
from kdlab.errors import ConfigError, RegistryError
from kdlab.models import MODELS, create_model
from kdlab.plugins import load_plugin
from kdlab.registry import Registry
from kdlab.views import VIEWS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_models.py"


def _install_dist(site: Path, name: str, entry_points: str, module: str) -> None:
    """A minimal installed distribution: what pip leaves in site-packages."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    (site / f"{name}.py").write_text(textwrap.dedent(module))


PLUGIN_MODULE = """
    import torch
    from torch import nn

    IMPORTED = []  # what importing this module did, for the laziness test
    IMPORTED.append(1)


    def build(num_classes, in_channels=1, hidden=16):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))


    def negate():
        return lambda x: -x
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path holding an installed dist whose entry points join kdlab's
    model and view registries; the entries are removed from the registries afterwards."""
    site = tmp_path / "site"
    _install_dist(
        site,
        "kdlab_ep_demo",
        """
        [kdlab.models]
        ep_mlp = kdlab_ep_demo:build
        ep_broken = kdlab_ep_demo:no_such_factory
        [kdlab.views]
        ep_negate = kdlab_ep_demo:negate
        """,
        PLUGIN_MODULE,
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    for registry in (MODELS, VIEWS):
        for name in ("ep_mlp", "ep_negate"):
            registry._items.pop(name, None)
        registry._broken.clear()
        registry._seen = {k for k in registry._seen if k[0] != "kdlab_ep_demo"}
    sys.modules.pop("kdlab_ep_demo", None)


def test_installed_entry_points_join_the_registries(site: Path) -> None:
    with pytest.warns(UserWarning, match="'ep_broken' from package 'kdlab_ep_demo'"):
        model = create_model("ep_mlp", num_classes=10, in_channels=1, hidden=8)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert VIEWS.get("ep_negate")()(torch.ones(2)).tolist() == [-1.0, -1.0]
    # A broken entry point names its package and entry point; kdlab's own names still work.
    with pytest.raises(
        RegistryError,
        match=r"ep_broken = kdlab_ep_demo:no_such_factory.*"
        "AttributeError",
    ):
        create_model("ep_broken", 10)
    assert create_model("cnn_tiny", 10, 1) is not None


def test_entry_points_load_lazily_on_a_miss_or_a_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "lazy"
    _install_dist(
        site, "kdlab_ep_lazy", "[kdlab_test.things]\nthing = kdlab_ep_lazy:build\n", PLUGIN_MODULE
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "kdlab_ep_lazy", raising=False)
    reg: Registry[object] = Registry("thing", group="kdlab_test.things")
    reg.add("own", 1)
    assert reg.get("own") == 1 and "kdlab_ep_lazy" not in sys.modules  # a hit loads nothing
    assert reg.names() == ["own", "thing"]  # a listing does
    assert sys.modules["kdlab_ep_lazy"].IMPORTED == [1]
    assert reg.get("thing") is sys.modules["kdlab_ep_lazy"].build
    reg.names()
    assert sys.modules["kdlab_ep_lazy"].IMPORTED == [1]  # loaded once
    with pytest.raises(RegistryError, match=r"unknown thing 'nope'.*group 'kdlab_test.things'"):
        reg.get("nope")


def test_cli_lists_and_trains_an_entry_point_model(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.warns(UserWarning, match="ep_broken"):
        assert cli.main(["ls", "models"]) == 0
    assert "ep_mlp" in capsys.readouterr().out
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "student: {name: ep_mlp, kwargs: {hidden: 8}}\n"
        "data: {per_class: 4, batch_size: 16}\n"
        "train: {epochs: 1, progress: false}\n"
    )
    assert cli.main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["params"] == (64 * 8 + 8) + (8 * 10 + 10)


# ----------------------------------------------------------------- plugin files


def test_the_example_plugin_trains_kd_and_at_from_the_cli(
    tmp_path: Path, digits_teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the recipe names its plugin relative to the repository root
    run = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "examples/my_tinynet_kd.yaml",
            f"teacher.checkpoint={digits_teacher}",
            "train.epochs=1",
            "train.progress=false",
            "data.per_class=5",
            "--run-dir",
            str(run),
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Each term's mean loss is logged per epoch (train_<term> today).
    logged = {k.rsplit("_", 1)[-1]: v for k, v in rows[-1].items() if k.startswith("train_")}
    assert {"ce", "kd", "at"} <= set(logged), rows[-1]
    assert logged["at"] > 0 and logged["kd"] > 0
    saved = (run / "config.yaml").read_text()
    assert str(EXAMPLE) in saved  # the run folder records the plugin's absolute path
    assert "my_tinynet" in MODELS


def test_cli_plugin_flag_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = tmp_path / "flagged.py"
    plugin.write_text(
        "from kdlab.models import register_model\n"
        "from kdlab.models.small import SmallCNN\n"
        "register_model('flagged_cnn')(lambda num_classes, in_channels=1: "
        "SmallCNN(num_classes, in_channels, widths=(4,)))\n"
    )
    try:
        assert cli.main(["--plugin", str(plugin), "ls", "models"]) == 0
        assert "flagged_cnn" in capsys.readouterr().out
        assert cli.main(["ls", "models", "--plugin", str(plugin)]) == 0  # runs once only
        assert "flagged_cnn" in capsys.readouterr().out
    finally:
        MODELS._items.pop("flagged_cnn", None)


def test_plugin_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--plugin", str(tmp_path / "missing.py"), "ls", "models"]) == 2
    assert "plugin file" in capsys.readouterr().err
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"bad.py' failed while running: RuntimeError: boom"):
        load_plugin(bad)
    with pytest.raises(ConfigError, match="must be a Python file"):
        load_plugin(tmp_path / "x.txt")
    dup = tmp_path / "dup.py"
    dup.write_text("from kdlab.models import register_model\nregister_model('cnn_tiny')(len)\n")
    with pytest.raises(ConfigError, match=r"dup.py'.*'cnn_tiny' is already registered"):
        load_plugin(dup)
    with pytest.raises(ConfigError, match=r"'plugins'.*does not exist"):
        load_config({"student": {"name": "cnn_tiny"}, "plugins": [str(tmp_path / "nope.py")]})


def test_recipes_without_plugins_run_no_code(tmp_path: Path) -> None:
    # A name that looks like a module path is never imported: only registries resolve.
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(RegistryError, match="unknown model 'evil'"):
            create_model("evil", 10)
        with pytest.raises(RegistryError, match="unknown model 'evil:build'"):
            create_model("evil:build", 10)
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists()
