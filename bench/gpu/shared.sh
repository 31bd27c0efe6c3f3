#!/bin/sh
# shared.sh - pack the reference files the GPU tests read from ../shared
# (tiny-mistral-10m, its forward golden and calibration windows) into
# .devwork/shared.tar.xz, which travels with a device call (../shared does
# not; the 64 MiB limit leaves no room for its Fisher golden, which the CPU
# tests check). device_tests.sh unpacks it into .devwork/shared.
set -eu
src=${1:-../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/models" "$tmp/golden/tiny-mistral-10m" "$tmp/data"
cp -r "$src/models/tiny-mistral-10m" "$tmp/models/"
cp "$src/golden/tiny-mistral-10m/forward-fp32.safetensors" "$tmp/golden/tiny-mistral-10m/"
cp "$src/data/calib-tiny-mistral-10m-128x512.safetensors" "$tmp/data/"
mkdir -p .devwork
tar -C "$tmp" -cJf .devwork/shared.tar.xz .
ls -la .devwork/shared.tar.xz
