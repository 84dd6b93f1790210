#!/usr/bin/env bash
# Smoke-test the built bundle dist/prunescope/ without a display, then report its size.
# The frozen app must start, find its embedded EfficientNet-Lite0 weights, explain a bundled sample
# photo headless, and pass its own self-test (engine run + main window rendered offscreen).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=dist/prunescope
app=$bundle/prunescope
if [ ! -x "$app" ]; then
    echo "check_bundle.sh: no $app; run packaging/build.sh first" >&2
    exit 1
fi
export QT_QPA_PLATFORM=offscreen
TIMEFORMAT="   (%R s)"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== prunescope --help"
time "$app" --help > /dev/null

echo "== prunescope models"
time "$app" models | tee "$out/models.txt"
if ! grep -Eq "^efficientnet_lite0 +yes" "$out/models.txt"; then
    echo "check_bundle.sh: the bundle does not find its EfficientNet-Lite0 weights" >&2
    exit 1
fi

echo "== prunescope explain (bundled sample, headless)"
time "$app" explain "$bundle/_internal/resources/samples/coffee.png" --out "$out/explain" \
    --methods pathway-gradient,grad-cam,lrp --steps 4 --device cpu --quiet
find "$out/explain" -type f | sed "s|^$out/||" | sort

echo "== prunescope sanity (scipy, scikit-image)"
time "$app" sanity "$bundle/_internal/resources/samples/coffee.png" --out "$out/sanity" \
    --methods gradient --quiet
find "$out/sanity" -type f | sed "s|^$out/||" | sort

echo "== prunescope prune (Torch-Pruning)"
time "$app" prune --criterion l1 --sparsity 20 --out "$out/pruned.pt" --device cpu --quiet

echo "== prunescope --self-test"
time "$app" --self-test

echo "== bundle size"
du -sh "$bundle"
