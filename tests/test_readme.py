"""Every code block in the README runs, or is checked against what it names.

- ``python`` blocks are executed (in a scratch folder that holds the files they read);
- shell blocks (``bash``, ``sh`` or untagged): every ``kdlab`` command line is parsed by
  the real CLI parser (so a pipe, a misspelt option or a removed command fails), its
  recipes are loaded with its overrides, and the cheap ones (``ls``, ``--version``,
  ``bench --list``) are run; ``make`` targets must exist in the Makefile, scripts and
  listed paths must exist;
- ``yaml`` blocks must parse. Any other language fails until this file learns it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from kdlab.cli import all_parsers, build_parser, main
from kdlab.config import load_config
from kdlab.engine.checkpoint import save_weights
from kdlab.models import create_model

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
SHELL = {"", "bash", "sh", "shell", "console"}
EXTERNAL = {"pip", "apt-get", "git", "cd", "export", "docker", "kubectl", "srun", "sbatch"}


def _lines(block: str) -> list[list[str]]:
    """Shell words of each command line (continuations joined, comments dropped)."""
    return [w for w in (shlex.split(line, comments=True) for line in block.replace("\\\n", " ")
            .splitlines()) if w]  # fmt: skip


def _check_kdlab(argv: list[str]) -> None:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --version / --help exit 0; argparse printed any error
        if exit_.code == 0:
            return
        raise AssertionError(f"README: `kdlab {' '.join(argv)}` does not parse") from exit_
    command = args.command
    if command == "train":
        load_config(ROOT / args.config, args.overrides)
    elif command == "tune":
        load_config(ROOT / args.config, args.overrides)
        assert (ROOT / args.space).is_file(), f"README: no search space {args.space}"
    elif command == "pipeline":
        assert (ROOT / args.config).is_file(), f"README: no pipeline config {args.config}"
    elif command == "ls" or (command == "bench" and args.list):
        assert main(argv) == 0


def _check_shell(words: list[str]) -> None:
    head, rest = words[0], words[1:]
    if head == "kdlab":
        _check_kdlab(rest)
    elif head == "torchrun" or (head.startswith("python") and rest[:2] == ["-m", "kdlab"]):
        assert "-m" in rest and rest[rest.index("-m") + 1] == "kdlab", words
        _check_kdlab(rest[rest.index("-m") + 2 :])
    elif head == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert set(rest) <= set(targets), f"README: make {rest}: targets are {targets}"
    elif head.startswith("python"):
        assert (ROOT / rest[0]).is_file(), f"README: no script {rest[0]}"
    elif "/" in head:  # a layout listing: the path must exist
        assert (ROOT / head).exists(), f"README: {head} does not exist"
    elif head not in EXTERNAL:
        raise AssertionError(f"README: no check for the command line {' '.join(words)!r}")


@pytest.mark.parametrize(
    ("lang", "block"), BLOCKS, ids=[f"block{i}-{lang or 'plain'}" for i, (lang, _) in
                                    enumerate(BLOCKS)]  # fmt: skip
)
def test_readme_block(
    lang: str, block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if lang == "python":
        # The files a snippet reads: an (untrained) teacher run where the README says.
        weights = tmp_path / "runs/cifar100/resnet56/model.safetensors"
        weights.parent.mkdir(parents=True)
        save_weights(weights, create_model("resnet56", num_classes=100).state_dict())
        monkeypatch.chdir(tmp_path)
        torch.manual_seed(0)
        exec(compile(block, "README.md (python block)", "exec"), {"__name__": "readme"})
    elif lang in SHELL:
        lines = _lines(block)
        assert lines
        for words in lines:
            _check_shell(words)
    elif lang == "yaml":
        yaml.safe_load(block)
    else:
        raise AssertionError(f"README: no check for a {lang!r} code block; add one here")


def test_every_block_is_seen() -> None:
    assert len(BLOCKS) >= 6 and any(lang == "python" for lang, _ in BLOCKS)


def _cited_paths(text: str) -> set[str]:
    """Repository paths a text cites: in backticks or markdown links, from a top folder."""
    cited = re.findall(r"`([^`\s]+)`", text) + re.findall(r"\]\(([^)\s]+)\)", text)
    tops = ("src/", "configs/", "docs/", "benchmarks/", "scripts/", "tests/", "shared/", ".ci/")
    return {c.rstrip("/") for c in cited if c.startswith(tops) and not re.search(r"[<*]|\.\.\.", c)}


def test_cited_files_ship() -> None:
    """What the README and the CLI's help cite is in the repository (not a private note)."""
    readme = (ROOT / "README.md").read_text()
    paths = _cited_paths(readme)
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README cites files that do not ship: {missing}"
    assert "src/kdlab/verify/propositions.py" in paths  # where the checked claims are stated
    helps = ""
    for parser in all_parsers(build_parser()):
        helps += f" {parser.description or ''}"
        for action in parser._actions:  # a sub-command's help lives with its parent
            subs = getattr(action, "_choices_actions", [])
            helps += " ".join(str(a.help or "") for a in [action, *subs])
    shipped = {p.name for top in ("src", "docs", "benchmarks") for p in (ROOT / top).rglob("*")}
    shipped |= {p.name for p in ROOT.glob("*.md")}
    for name in re.findall(r"\b(?:in|see)\s+([\w/.-]+\.(?:md|py))\b", helps):  # citations
        assert Path(name).name in shipped, f"CLI help cites {name}, which does not ship"
