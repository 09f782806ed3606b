"""The ImageNet zoo: parameter counts of the reference implementations, torchvision's
state_dict layout, and the taps the ImageNet recipes name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdlab.bench.protocol import expand, load_protocol
from kdlab.config import load_config
from kdlab.methods import build_terms
from kdlab.models import count_parameters, create_model
from kdlab.taps import probe_shapes

ROOT = Path(__file__).resolve().parents[1]


def _mobilenetv1_reference_count(num_classes: int) -> int:
    """mdistiller's MobileNetV1 counted by hand: a 3x3 conv 3->32 + BN, then per
    separable block a 3x3 depthwise conv + BN on c_in and a 1x1 conv c_in->c_out + BN."""
    total = 3 * 32 * 9 + 2 * 32
    widths = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    for cin, cout in zip(widths, widths[1:]):
        total += cin * 9 + 2 * cin + cin * cout + 2 * cout
    return total + 1024 * num_classes + num_classes


# torchvision's documented counts (torchvision.models: ResNet18_Weights.IMAGENET1K_V1 and
# friends list num_params 11689512, 21797672, 25557032).
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("mobilenetv1", _mobilenetv1_reference_count(1000)),
    ],
)
def test_parameter_counts_match_the_references(name: str, params: int) -> None:
    assert count_parameters(create_model(name, 1000)) == params
    if name == "mobilenetv1":
        assert params == 4_231_976


def test_cifar_names_still_build_cifar_models() -> None:
    assert type(create_model("resnet20", 100)).__name__ == "CifarResNet"
    assert type(create_model("resnet18", 100)).__name__ == "ImageNetResNet"


@pytest.mark.parametrize(
    ("name", "taps"),
    [
        (
            "resnet18",
            {"layer4": (512, 2, 2), "layer4.1.relu:input": (512, 2, 2), "fc:input": (512,)},
        ),
        ("mobilenetv1", {"model.11": (512, 4, 4), "model.13.5:input": (1024, 2, 2)}),
    ],
)
def test_recipe_taps_exist_with_their_shapes(name: str, taps: dict[str, tuple[int, ...]]) -> None:
    model = create_model(name, 10)
    shapes = probe_shapes(model, list(taps), torch.randn(2, 3, 64, 64))
    assert {str(k): tuple(v[1:]) for k, v in shapes.items() if str(k)} == taps


def _torchvision_models():  # noqa: ANN202
    try:
        import torchvision.models as tvm  # noqa: PLC0415
    except Exception:  # not importable beside the CPU torch 2.13 wheel
        return None
    return tvm


@pytest.mark.skipif(_torchvision_models() is None, reason="torchvision does not import here")
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_weights_load_and_give_the_same_logits(name: str) -> None:
    """Run with torch 2.14.1 + torchvision 0.29.1 in a separate venv: passed."""
    tv = getattr(_torchvision_models(), name)(weights=None, num_classes=10).eval()
    ours = create_model(name, 10).eval()
    theirs = tv.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.items()
    }
    ours.load_state_dict(theirs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=1e-5)


RECIPES = sorted((ROOT / "configs" / "imagenet").glob("*-*/*.yaml"))
METHODS = {"kd", "at", "crd", "dkd", "fitnet", "ab", "ft", "pkt", "rkd", "sp", "vid", "nst"}


def test_imagenet_recipes_cover_both_pairs_and_every_method() -> None:
    pairs = {p.parent.name for p in RECIPES}
    assert pairs == {"resnet34-resnet18", "resnet50-mobilenetv1"}
    for pair in pairs:
        assert {p.stem for p in RECIPES if p.parent.name == pair} == METHODS


@pytest.mark.parametrize("pair", ["resnet34-resnet18", "resnet50-mobilenetv1"])
def test_imagenet_recipes_state_the_protocol_and_tap_existing_layers(pair: str) -> None:
    """Every recipe validates, states the published protocol, and names taps that exist
    on its models (one shape probe per model on 32x32 inputs for all recipes at once)."""
    taps: dict[str, set[str]] = {"student": set(), "teacher": set()}
    for path in (p for p in RECIPES if p.parent.name == pair):
        cfg = load_config(path)
        assert cfg.teacher is not None
        assert f"{cfg.teacher.name}-{cfg.student.name}" == pair
        assert (cfg.train.epochs, cfg.data.batch_size, cfg.train.optimizer.lr) == (100, 256, 0.1)
        assert cfg.train.schedule.milestones == [30, 60, 90]
        assert cfg.train.optimizer.weight_decay == 1e-4 and cfg.data.name == "imagenet"
        assert [t.method for t in build_terms(cfg.distill.terms)] == ["ce", path.stem]
        for term in cfg.distill.terms:
            for role in taps:
                taps[role].update(term.get(role, []))
    teacher, student = pair.split("-")
    for role, name in (("teacher", teacher), ("student", student)):
        shapes = probe_shapes(create_model(name, 10), sorted(taps[role]), torch.randn(2, 3, 32, 32))
        assert {str(t) for t in shapes} >= taps[role]


def test_the_imagenet_protocol_runs_exactly_the_recipes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every (pair, method) cell of ``kdlab bench imagenet`` equals its recipe's distill
    section, and the protocol's base repeats the recipes' data and train settings."""
    monkeypatch.chdir(ROOT)  # the protocol names configs/imagenet relative to the repository
    proto = load_protocol("imagenet")
    runs = expand(proto, tmp_path)
    cells = [r for r in runs if r.kind == "method"]
    assert len(cells) == 2 * len(METHODS) and {r.method for r in cells} == METHODS
    for run in cells:
        recipe = load_config(ROOT / "configs" / "imagenet" / run.pair / f"{run.method}.yaml")
        assert run.cfg.distill.terms == recipe.distill.terms, run.label
        assert run.cfg.train.epochs == recipe.train.epochs
        assert run.cfg.train.optimizer == recipe.train.optimizer
        assert run.cfg.train.schedule == recipe.train.schedule
        assert run.cfg.data.model_dump(exclude={"root"}) == recipe.data.model_dump(exclude={"root"})
        assert run.cfg.student.name == recipe.student.name == run.pair.split("-")[1]
