#!/usr/bin/env bash
# make demo: lazyconv's main job on an embedded store, from scratch.
set -euo pipefail
GO=${GO:-go}
DEMO_DIR=${DEMO_DIR:-.cache/demo}
LAZYCONV=${LAZYCONV:-bin/lazyconv}
GOROOT_DIR=$($GO env GOROOT)
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
lc() { "$LAZYCONV" --root "$DEMO_DIR/root" "$@"; }
step() { printf '\n== %s\n' "$*"; }

step "Build an image from files every Go install has (GOROOT): 4 layers, gzip and zstd"
$GO run ./hack/mkimage -o "$DEMO_DIR/demo.tar" -name example.com/demo/go:src \
  "$GOROOT_DIR/src/net" "$GOROOT_DIR/src/crypto:zstd" "$GOROOT_DIR/src/runtime" "$GOROOT_DIR/pkg/tool"
ls -l "$DEMO_DIR/demo.tar"

step "Import it into the embedded store ($DEMO_DIR/root: containerd's metadata DB + content store, no daemon)"
lc image import "$DEMO_DIR/demo.tar"
lc image ls

step "Convert it to eStargz (lossless, gzip level 9)"
lc image convert --estargz --oci example.com/demo/go:src example.com/demo/go:esgz

step "Verify it: every layer's TOC against its annotation, every file against the TOC"
lc image verify example.com/demo/go:esgz

step "Convert again, into another name: every layer comes from the variant cache"
start=$(date +%s%N)
lc image convert --estargz --oci example.com/demo/go:src example.com/demo/go:esgz-again
echo "cached re-convert took $(( ($(date +%s%N) - start) / 1000000 )) ms, process start included"

step "Is the first converted layer eStargz? (answered from the label cache)"
lc content ls > "$DEMO_DIR/content.txt"
layer=$(awk '/lazyconv.io\/annotation/ {print $1; exit}' "$DEMO_DIR/content.txt")
lc content check "$layer"

step "Images"
lc image ls
