#!/usr/bin/env bash
# Install Fashion-MNIST (Debian's dataset-fashion-mnist) when its files are missing and
# apt-get is usable (root). Never fails: tests that need the files skip without them.
root=/usr/share/datasets/fashion-mnist
[ -f "$root/train-images-idx3-ubyte.gz" ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "fashion-data: apt-get install dataset-fashion-mnist failed; fashion tests will skip" >&2
else
  echo "fashion-data: no Fashion-MNIST in $root and no root apt-get; fashion tests will skip" >&2
fi
exit 0
