#!/bin/sh
# shared.sh - copy the reference files the GPU tests read from ../shared
# (tiny-mistral-10m, its goldens and calibration windows) into .devwork/shared,
# which travels with a device call (../shared does not).
set -eu
src=${1:-../shared}
dst=.devwork/shared
mkdir -p "$dst/models" "$dst/golden" "$dst/data"
cp -r "$src/models/tiny-mistral-10m" "$dst/models/"
cp -r "$src/golden/tiny-mistral-10m" "$dst/golden/"
cp "$src/data/calib-tiny-mistral-10m-128x512.safetensors" "$dst/data/"
du -sh "$dst"
