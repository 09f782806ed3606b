"""Compute the golden loss values in this folder by running the reference implementations.

The reference code is NOT part of kdlab: clone each repository at the recorded commit
into one folder (``--ext``, default ``/work/ext``) and run, from the repository root::

    python tests/golden/generate.py --ext /work/ext

Each ``<method>.json`` holds the seeded inputs (float64, as nested lists), the values the
reference code returned on them, and where that code came from (repository, commit,
file, object). ``tests/test_golden.py`` feeds the same inputs to kdlab's functions and
compares, up to the constants documented there.

Repositories (folder name under ``--ext``: GitHub repository @ commit):

- RepDistiller: HobbitLong/RepDistiller @ b84f547c5db6a35318d4671d7d5c4de74c822403
- mdistiller: megvii-research/mdistiller @ a08d46f10d6102bd6e3f258ca5ac880b020ea259
- attention-transfer: szagoruyko/attention-transfer @ 893df5488f93691799f082a70e2521a9dc2ddf2d
- RKD: lenscloth/RKD @ 0a6c3c0c190722d428322bf71703c0ae86c25242
- AB_distillation: bhheo/AB_distillation @ a7701d3506e13da87bda75aba1cee6397408144f
- Factor-Transfer-pytorch: Jangho-Kim/Factor-Transfer-pytorch
  @ 19cce265ebe51c751481041e223a13be2e684322
- KDZoo: AberHu/Knowledge-Distillation-Zoo @ 65470c846c1300d555815da26999cbe2b51fc815
- DarkRank: TuSimple/DarkRank @ 5e6a74f76c69e4dd78324071d5a4f28792457a3f

Some files import packages that the loss code does not use (nested_dict, torchvision,
mxnet); for those only the named functions or classes are taken from the file's syntax
tree and executed (``_load_objects``), with a stub where the code names a framework
base class. Each such case is recorded in the JSON's ``reference.note``.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
REPOS = {
    "RepDistiller": "HobbitLong/RepDistiller",
    "mdistiller": "megvii-research/mdistiller",
    "attention-transfer": "szagoruyko/attention-transfer",
    "RKD": "lenscloth/RKD",
    "AB_distillation": "bhheo/AB_distillation",
    "Factor-Transfer-pytorch": "Jangho-Kim/Factor-Transfer-pytorch",
    "KDZoo": "AberHu/Knowledge-Distillation-Zoo",
    "DarkRank": "TuSimple/DarkRank",
}
COMMAND = "python tests/golden/generate.py --ext /work/ext"


def _t(x: torch.Tensor | float) -> Any:
    return x.detach().double().tolist() if isinstance(x, torch.Tensor) else float(x)


def _commit(ext: Path, folder: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(ext / folder), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _load_objects(path: Path, names: list[str], env: dict[str, Any]) -> dict[str, Any]:
    """Execute only the top-level definitions ``names`` of a reference file."""
    tree = ast.parse(path.read_text())
    keep = [
        node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names
    ]
    missing = set(names) - {n.name for n in keep}
    if missing:
        raise SystemExit(f"{path}: no top-level {sorted(missing)}")
    namespace = dict(env)
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return {n: namespace[n] for n in names}


class Golden:
    """Collects one method's cases and writes ``<method>.json``."""

    def __init__(self, ext: Path, method: str, folder: str, path: str, obj: str, note: str = ""):
        self.method = method
        self.data: dict[str, Any] = {
            "method": method,
            "reference": {
                "repository": REPOS[folder],
                "commit": _commit(ext, folder),
                "path": path,
                "object": obj,
                "note": note,
            },
            "command": COMMAND,
            "torch": torch.__version__,
            "cases": [],
        }

    def case(self, name: str, inputs: dict[str, Any], outputs: dict[str, Any], **extra: Any):
        self.data["cases"].append(
            {
                "name": name,
                "inputs": {k: _t(v) for k, v in inputs.items()},
                "outputs": {k: _t(v) for k, v in outputs.items()},
                **extra,
            }
        )

    def write(self) -> None:
        out = HERE / f"{self.method}.json"
        # one line per case keeps the files small and diffs readable
        head = {k: v for k, v in self.data.items() if k != "cases"}
        cases = ",\n".join(json.dumps(c, separators=(",", ":")) for c in self.data["cases"])
        text = json.dumps(head, indent=1)[:-2] + ',\n "cases": [\n' + cases + "\n]}\n"
        json.loads(text)
        out.write_text(text)
        print(f"wrote {out.relative_to(HERE.parent.parent)} ({len(self.data['cases'])} cases)")


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


# ----------------------------------------------------------------------- RepDistiller


def _layer_cases(g: Golden, pairs: list[tuple[torch.Tensor, torch.Tensor]], loss: Any) -> None:
    """One case per layer pair for a RepDistiller loss that takes lists of layers."""
    values = loss([s for s, _ in pairs], [t for _, t in pairs])
    for i, ((s, t), value) in enumerate(zip(pairs, values)):
        g.case(f"layer{i}", {"student": s, "teacher": t}, {"loss": value})
    g.write()


def repdistiller(ext: Path) -> None:
    sys.path.insert(0, str(ext / "RepDistiller"))
    import distiller_zoo as dz  # noqa: PLC0415
    from crd import memory as crd_memory  # noqa: PLC0415
    from crd.criterion import ContrastLoss  # noqa: PLC0415

    torch.manual_seed(0)
    g = Golden(ext, "kd", "RepDistiller", "distiller_zoo/KD.py", "DistillKL")
    for t in (1.0, 4.0):
        ys, yt = randn(6, 5) * 3, randn(6, 5) * 3
        g.case(f"T{t:g}", {"student": ys, "teacher": yt}, {"loss": dz.DistillKL(t)(ys, yt)}, T=t)
    g.write()

    g = Golden(ext, "fitnet", "RepDistiller", "distiller_zoo/FitNet.py", "HintLoss")
    fs, ft = randn(3, 2, 4, 4), randn(3, 2, 4, 4)
    g.case("maps", {"student": fs, "teacher": ft}, {"loss": dz.HintLoss()(fs, ft)})
    g.write()

    g = Golden(ext, "at", "RepDistiller", "distiller_zoo/AT.py", "Attention")
    pairs = [(randn(3, 2, 5, 5), randn(3, 4, 5, 5)), (randn(3, 2, 3, 3), randn(3, 5, 3, 3))]
    _layer_cases(g, pairs, dz.Attention())

    g = Golden(ext, "sp", "RepDistiller", "distiller_zoo/SP.py", "Similarity")
    fs, ft = randn(5, 2, 3, 3), randn(5, 4, 2, 2)
    (loss,) = dz.Similarity()([fs], [ft])
    g.case("maps", {"student": fs, "teacher": ft}, {"loss": loss})
    g.write()

    g = Golden(ext, "rkd", "RepDistiller", "distiller_zoo/RKD.py", "RKDLoss")
    fs, ft = randn(7, 6), randn(7, 9)
    rkd = dz.RKDLoss(w_d=25, w_a=50)
    g.case(
        "25d+50a",
        {"student": fs, "teacher": ft},
        {
            "loss": rkd(fs, ft),
            "distance": dz.RKDLoss(w_d=1, w_a=0)(fs, ft),
            "angle": dz.RKDLoss(w_d=0, w_a=1)(fs, ft),
        },
    )
    g.write()

    g = Golden(ext, "pkt", "RepDistiller", "distiller_zoo/PKT.py", "PKT")
    fs, ft = randn(8, 6), randn(8, 10)
    g.case("vectors", {"student": fs, "teacher": ft}, {"loss": dz.PKT()(fs, ft)})
    g.write()

    g = Golden(ext, "ab", "RepDistiller", "distiller_zoo/AB.py", "ABLoss")
    gs = [randn(3, 2, 4, 4) * 1.5, randn(3, 3, 3, 3) * 1.5, randn(3, 4, 2, 2) * 1.5]
    gt = [randn(3, 2, 4, 4), randn(3, 3, 3, 3), randn(3, 4, 2, 2)]
    losses = dz.ABLoss(3, margin=1.0)(gs, gt)
    inputs = {f"student{i}": s for i, s in enumerate(gs)}
    inputs.update({f"teacher{i}": t for i, t in enumerate(gt)})
    g.case("three_layers", inputs, {f"loss{i}": v for i, v in enumerate(losses)}, margin=1.0)
    g.write()

    g = Golden(ext, "fsp", "RepDistiller", "distiller_zoo/FSP.py", "FSP")
    gs = [randn(2, 2, 4, 4), randn(2, 3, 4, 4), randn(2, 4, 2, 2)]
    gt = [randn(2, 2, 4, 4), randn(2, 3, 4, 4), randn(2, 4, 2, 2)]
    fsp = dz.FSP([x.shape for x in gs], [x.shape for x in gt])
    mats = fsp.compute_fsp(gs)
    losses = fsp(gs, gt)
    inputs = {f"student{i}": s for i, s in enumerate(gs)}
    inputs.update({f"teacher{i}": t for i, t in enumerate(gt)})
    outputs = {f"loss{i}": v for i, v in enumerate(losses)}
    outputs.update({f"student_fsp{i}": m for i, m in enumerate(mats)})
    g.case("three_maps", inputs, outputs)
    g.write()

    g = Golden(ext, "nst", "RepDistiller", "distiller_zoo/NST.py", "NSTLoss")
    pairs = [(randn(2, 3, 4, 4), randn(2, 5, 4, 4)), (randn(2, 4, 4, 4), randn(2, 2, 2, 2))]
    _layer_cases(g, pairs, dz.NSTLoss())

    g = Golden(ext, "vid", "RepDistiller", "distiller_zoo/VID.py", "VIDLoss")
    vid = dz.VIDLoss(3, 4, 5, init_pred_var=5.0, eps=1e-5).double()
    with torch.no_grad():
        vid.log_scale.add_(randn(5) * 0.5)  # away from the initial value, so it matters
    fs, ft = randn(2, 3, 4, 4), randn(2, 5, 2, 2)
    inputs = {"student": fs, "teacher": ft, "log_scale": vid.log_scale}
    inputs.update({f"conv{i}": vid.regressor[i].weight for i in (0, 2, 4)})
    g.case("pooled", inputs, {"loss": vid(fs, ft)}, eps=1e-5, mid_channels=4)
    g.write()

    note = (
        "ContrastMemory's __init__ calls AliasMethod.cuda(); it is stubbed to a no-op on "
        "CPU. Negatives are passed as contrast_idx (RepDistiller's data loader draws them)."
    )
    g = Golden(ext, "crd", "RepDistiller", "crd/memory.py", "ContrastMemory", note)
    crd_memory.AliasMethod.cuda = lambda self: None
    n_data, dim, k = 12, 5, 6
    mem = crd_memory.ContrastMemory(dim, n_data, k, T=0.5, momentum=0.5).double()
    bank_s, bank_t = mem.memory_v1.clone(), mem.memory_v2.clone()
    es, et = F.normalize(randn(3, dim), dim=1), F.normalize(randn(3, dim), dim=1)
    y = torch.tensor([2, 7, 11])
    idx = torch.cat([y[:, None], torch.randint(0, n_data, (3, k))], dim=1)
    out_s, out_t = mem(es, et, y, idx)
    g.case(
        "memory",
        {"student": es, "teacher": et, "bank_s": bank_s, "bank_t": bank_t},
        {
            "scores_s": out_s.squeeze(-1),
            "scores_t": out_t.squeeze(-1),
            "bank_s": mem.memory_v1,
            "bank_t": mem.memory_v2,
            "nce_s": ContrastLoss(n_data)(out_s),
            "nce_t": ContrastLoss(n_data)(out_t),
        },
        indices=y.tolist(),
        drawn=idx.tolist(),
        num_data=n_data,
        temperature=0.5,
        momentum=0.5,
    )
    g.write()


# ----------------------------------------------------------------------- others


def mdistiller(ext: Path) -> None:
    sys.path.insert(0, str(ext / "mdistiller"))
    from mdistiller.distillers.DKD import dkd_loss  # noqa: PLC0415

    torch.manual_seed(1)
    g = Golden(ext, "dkd", "mdistiller", "mdistiller/distillers/DKD.py", "dkd_loss")
    for alpha, beta, t in ((1.0, 8.0, 4.0), (1.0, 2.0, 1.0)):
        zs, zt = randn(6, 7) * 3, randn(6, 7) * 3
        y = torch.randint(0, 7, (6,))
        loss = dkd_loss(zs, zt, y, alpha, beta, t)
        g.case(
            f"a{alpha:g}b{beta:g}T{t:g}",
            {"student": zs, "teacher": zt, "targets": y},
            {"loss": loss},
            alpha=alpha,
            beta=beta,
            T=t,
        )
    g.write()


def attention_transfer(ext: Path) -> None:
    path = ext / "attention-transfer" / "utils.py"
    note = "utils.py imports nested_dict for its model code; only at and at_loss are executed."
    objs = _load_objects(path, ["at", "at_loss"], {"F": F, "torch": torch})
    torch.manual_seed(2)
    g = Golden(ext, "at_authors", "attention-transfer", "utils.py", "at_loss", note)
    s, t = randn(3, 2, 4, 4), randn(3, 5, 4, 4)
    g.case("layer", {"student": s, "teacher": t}, {"loss": objs["at_loss"](s, t)})
    g.write()


class _ShimF:
    """torch.nn.functional with the pre-1.0 ``reduction='elementwise_mean'`` spelling."""

    def __getattr__(self, name: str) -> Any:
        return getattr(F, name)

    @staticmethod
    def smooth_l1_loss(a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.smooth_l1_loss(
            a, b, reduction="mean" if reduction == "elementwise_mean" else reduction
        )


def rkd_authors(ext: Path) -> None:
    sys.path.insert(0, str(ext / "RKD"))
    from metric.utils import pdist  # noqa: PLC0415

    path = ext / "RKD" / "metric" / "loss.py"
    note = (
        "RkdDistance/RKdAngle call smooth_l1_loss(reduction='elementwise_mean'), the "
        "pre-1.0 name of 'mean'; it is mapped to 'mean'."
    )
    env = {"torch": torch, "nn": nn, "F": _ShimF(), "pdist": pdist}
    objs = _load_objects(path, ["RkdDistance", "RKdAngle", "HardDarkRank"], env)
    torch.manual_seed(3)
    g = Golden(ext, "rkd_authors", "RKD", "metric/loss.py", "RkdDistance, RKdAngle", note)
    fs, ft = randn(7, 5), randn(7, 8)
    g.case(
        "vectors",
        {"student": fs, "teacher": ft},
        {"distance": objs["RkdDistance"]()(fs, ft), "angle": objs["RKdAngle"]()(fs, ft)},
    )
    g.write()

    g = Golden(ext, "darkrank_hard", "RKD", "metric/loss.py", "HardDarkRank")
    fs, ft = randn(9, 5), randn(9, 6)
    for alpha, beta in ((3.0, 3.0), (2.0, 3.0)):
        loss = objs["HardDarkRank"](alpha=alpha, beta=beta, permute_len=4)(fs, ft)
        g.case(
            f"a{alpha:g}b{beta:g}",
            {"student": fs, "teacher": ft},
            {"loss": loss},
            alpha=alpha,
            beta=beta,
            list_length=4,
        )
    g.write()


def ab_authors(ext: Path) -> None:
    path = ext / "AB_distillation" / "cifar10_AB_distillation.py"
    note = "A training script; only criterion_alternative_L2 is executed."
    objs = _load_objects(path, ["criterion_alternative_L2"], {"torch": torch})
    torch.manual_seed(4)
    g = Golden(ext, "ab_authors", "AB_distillation", path.name, "criterion_alternative_L2", note)
    s, t = randn(2, 3, 4, 4) * 1.5, randn(2, 3, 4, 4)
    loss = objs["criterion_alternative_L2"](s, t, 1.0)
    g.case("map", {"student": s, "teacher": t}, {"loss": loss}, margin=1.0)
    g.write()


def ft_authors(ext: Path) -> None:
    path = ext / "Factor-Transfer-pytorch" / "utils.py"
    note = (
        "utils.py imports torchvision for its data code; only FT is executed. "
        "Loss: nn.L1Loss, as train_student.py."
    )
    objs = _load_objects(path, ["FT"], {"F": F})
    torch.manual_seed(5)
    g = Golden(ext, "ft", "Factor-Transfer-pytorch", "utils.py", "FT + nn.L1Loss", note)
    fs, ft = randn(3, 2, 4, 4), randn(3, 2, 4, 4)
    loss = nn.L1Loss()(objs["FT"](fs), objs["FT"](ft))
    g.case("factors", {"student": fs, "teacher": ft}, {"loss": loss})
    g.write()


def cc_kdzoo(ext: Path) -> None:
    path = ext / "KDZoo" / "kd_losses" / "cc.py"
    # kd_losses/__init__.py imports a module missing from the repository: load the class
    env = {"torch": torch, "nn": nn, "F": F, "math": __import__("math")}
    CC = _load_objects(path, ["CC"], env)["CC"]  # noqa: N806
    torch.manual_seed(6)
    note = (
        "A third-party re-implementation of the paper's Taylor-RBF CC (the authors "
        "released no code); kd_losses/__init__.py imports a missing module, so the class "
        "is taken from cc.py alone."
    )
    g = Golden(ext, "cc", "KDZoo", "kd_losses/cc.py", "CC", note)
    fs, ft = randn(6, 5), randn(6, 9)
    g.case(
        "vectors", {"student": fs, "teacher": ft}, {"loss": CC(0.4, 2)(fs, ft)}, gamma=0.4, order=2
    )
    g.write()


def darkrank_official(ext: Path) -> None:
    path = ext / "DarkRank" / "PYOP" / "listnet_loss.py"
    note = (
        "An MXNet CustomOp; mxnet is not installed, so the file's numpy code runs with "
        "mx.operator.CustomOp stubbed by object and the output captured from self.assign. "
        "Queries: the first half of the batch (the code's even-iter pairing)."
    )
    import numpy as np  # noqa: PLC0415

    class _Op:
        def assign(self, dst: list, req: Any, value: Any) -> None:
            dst.append(float(value))

    mx = types.SimpleNamespace(operator=types.SimpleNamespace(CustomOp=_Op))
    env = {"mx": mx, "np": np, "permutations": __import__("itertools").permutations}
    objs = _load_objects(path, ["_get_perm_prob", "_get_all_perm_prob", "ListNetLoss"], env)
    torch.manual_seed(7)
    g = Golden(ext, "darkrank", "DarkRank", "PYOP/listnet_loss.py", "ListNetLoss.forward", note)
    s = F.normalize(randn(8, 6), dim=1)
    t = F.normalize(randn(8, 5), dim=1)
    op = objs["ListNetLoss"](power=2.0, scale=3.5, grad_scale=16.0, list_length=4)
    arr = types.SimpleNamespace
    out: list[float] = []
    op.forward(True, [None], [arr(asnumpy=s.numpy), arr(asnumpy=t.numpy)], [out], None)
    g.case(
        "official_defaults",
        {"student": s, "teacher": t},
        {"cross_entropy": out[0]},
        power=2.0,
        scale=3.5,
        list_length=4,
    )
    g.write()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ext", type=Path, default=Path("/work/ext"))
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    for job in (
        repdistiller,
        mdistiller,
        attention_transfer,
        rkd_authors,
        ab_authors,
        ft_authors,
        cc_kdzoo,
        darkrank_official,
    ):
        job(args.ext)


if __name__ == "__main__":
    main()
