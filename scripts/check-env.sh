#!/bin/sh
# Report what this machine offers tensorbit: compilers, libraries, test tools,
# CUDA toolkit and GPUs, and the free space where outputs will go.
# usage: scripts/check-env.sh [OUTPUT_DIR]   (default: the current directory)
out=${1:-.}
status=0
row() { printf '%-14s %s\n' "$1" "$2"; }
need() { # need LABEL COMMAND...: report, and fail the check if it is missing
    label=$1; shift
    if v=$("$@" 2>/dev/null | head -n 1) && [ -n "$v" ]; then row "$label" "$v"; else row "$label" "MISSING"; status=1; fi
}
need cc cc --version
row clang "$(clang --version 2>/dev/null | head -n 1 || echo 'not found (optional)')"
need make make --version
for lib in libcjson openblas lapacke cmocka; do
    if pkg-config --exists $lib 2>/dev/null; then row "$lib" "$(pkg-config --modversion $lib)"
    else row "$lib" "MISSING (scripts/setup.sh)"; status=1; fi
done
need bats bats --version
need python3 python3 --version
for m in safetensors tokenizers numpy; do
    v=$(python3 -c "import $m; print($m.__version__)" 2>/dev/null) && row "py:$m" "$v" || row "py:$m" "missing (interop tests skip)"
done
if command -v nvcc >/dev/null 2>&1 || [ -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ]; then
    nv=$(command -v nvcc || echo "$CUDA_HOME/bin/nvcc")
    row nvcc "$("$nv" --version | tail -n 2 | head -n 1)"
else
    row nvcc "not found (optional: make CUDA=1 needs it)"
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    nvidia-smi -L | sed 's/^/gpu            /'
else
    row gpu "none visible (the CPU path is used)"
fi
df -Pk "$out" 2>/dev/null | awk -v d="$out" 'NR==2 { printf "%-14s %.1f GiB free on %s (filesystem of %s)\n", "disk", $4/1048576, $6, d }'
exit $status
