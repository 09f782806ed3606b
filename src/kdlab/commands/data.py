"""``kdlab data shard FOLDER OUT``: write an image folder as WebDataset tar shards."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare datasets (shards for clusters)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = actions.add_parser(
        "shard",
        help="write FOLDER (train/<class>/*, val/...) as tar shards in OUT",
        description=(
            "Write every split of an ImageNet-layout folder (train/<class>/*, val/<class>/* "
            "or a flat val/ with --val-labels, optional test/) as WebDataset tar shards plus "
            "an index (kdlab-shards.json), each split in one seeded random order. Train on "
            "them with data.name: imagenet and data.root: OUT (or the URL you copy OUT to)."
        ),
    )
    s.add_argument("folder", help="the image folder")
    s.add_argument("out", help="an empty (or new) output folder")
    s.add_argument("--per-shard", type=int, default=1000, help="images per shard (1000)")
    s.add_argument("--seed", type=int, default=0, help="seed of the written order (0)")
    s.add_argument("--val-labels", default=None, help="label file for a flat val/ folder")
    s.set_defaults(func=run_shard)


def run_shard(args: argparse.Namespace) -> int:
    from kdlab.data.shards import write_shards  # noqa: PLC0415

    index = write_shards(args.folder, args.out, args.per_shard, args.seed, args.val_labels)
    for name, split in index["splits"].items():
        count = sum(s["count"] for s in split["shards"])
        print(f"{name:6s} {count:9,d} images in {len(split['shards']):5d} shards")
    print(f"{len(index['classes'])} classes; index: {args.out}/kdlab-shards.json")
    return 0
