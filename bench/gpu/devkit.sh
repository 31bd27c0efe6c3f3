#!/bin/sh
# devkit.sh - pack what a GPU machine without Debian's packages needs to run
# this checkout's CUDA build: the shared libraries the tools link (cJSON,
# OpenBLAS, LAPACKE, gfortran, cmocka), xz-compressed, into DIR.
#
#   bench/gpu/devkit.sh [DIR]        (default .devwork/kit)
#   on the GPU machine:  . bench/gpu/devkit-env.sh DIR   (unpacks, sets LD_LIBRARY_PATH)
#
# The build itself is made here (make CUDA=1 CUDA_ARCHS=90): nvcc 13.0 here and
# there, and a Debian 12 glibc binary runs on the newer glibc there.
# cuSPARSELt (make CUDA=1 CUSPARSELT=1) is not packed: libcusparseLt.so.0 is
# 234 MB, 155 MB xz-compressed (xz -6, measured 2026-12-02), over the 64 MiB a
# device call carries; devkit-env.sh takes it from the GPU machine's own
# nvidia-cusparselt-cu13 wheel (0.8.0 there, the version scripts/cusparselt.sh
# builds against).
set -eu
dir=${1:-.devwork/kit}
mkdir -p "$dir/lib"
for lib in libcjson.so.1 libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 liblapacke.so.3 liblapack.so.3 \
    libblas.so.3 libtmglib.so.3 libcmocka.so.0; do
    src=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ {print $NF; exit}')
    [ -n "$src" ] || { echo "devkit: $lib not found (scripts/setup.sh)" >&2; exit 3; }
    cp -L "$src" "$dir/lib/$lib"
done
tar -C "$dir" -cJf "$dir/libs.tar.xz" lib
rm -rf "$dir/lib"
ls -la "$dir"
