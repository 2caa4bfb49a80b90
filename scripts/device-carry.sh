#!/usr/bin/env bash
# The device tool copies the working tree's tracked files (plus the carried
# .devbundle/) to a GPU machine, within 64 MiB. The tree is larger, so before
# such a run `drop` takes the folders the GPU check does not read out of the
# index (the files stay here, ignored through .git/info/exclude), and `restore`
# puts them back afterwards. Never commit between the two.
#   bash scripts/device-carry.sh drop    # then: run scripts/gpu-check.sh with carry .devbundle
#   bash scripts/device-carry.sh restore
set -euo pipefail
cd "$(dirname "$0")/.."
# Not read by scripts/gpu-check.sh or the Cuda* tests: the embedded default
# model (the bundle is built without it), HART and Fashion-MNIST golden data,
# the .pth copy of the VAR golden weights.
paths=(models tests/data/golden/hart_tiny_a tests/data/golden/fmnist_a tests/data/golden_pth)
case "${1:-}" in
  drop)
    git rm -r -q --cached "${paths[@]}"
    for p in "${paths[@]}"; do grep -qx "/$p/" .git/info/exclude || echo "/$p/" >> .git/info/exclude; done
    echo "tracked now: $(git ls-files -z | xargs -0 du -bc | tail -n 1 | cut -f1) bytes"
    ;;
  restore)
    for p in "${paths[@]}"; do sed -i "\\|^/$p/\$|d" .git/info/exclude; done
    git reset -q -- "${paths[@]}"
    git status --short | head -n 5
    ;;
  *) echo "usage: $0 drop|restore" >&2; exit 2 ;;
esac
