# Shared setup for the CLI tests. TB_BIN is set by `make cli`.
TB_BIN=${TB_BIN:-$BATS_TEST_DIRNAME/../../build/bin}
TB_HELPERS=${TB_HELPERS:-$BATS_TEST_DIRNAME/../../build/tests/helpers}
TB_TEST_DATA=${TB_TEST_DATA:-$BATS_TEST_DIRNAME/../data}
TB_SHARED=${TB_SHARED:-$BATS_TEST_DIRNAME/../../../shared}
TB_MODEL=$TB_TEST_DATA/tiny-llama-6m
PATH=$TB_BIN:$PATH

# mkst FILE HEADER_JSON DATA_BYTES [HEADER_LEN]: a safetensors image with an
# 8-byte little-endian header length (default: the JSON's length).
mkst() {
    local file=$1 header=$2 nbytes=$3 len=${4:-${#2}}
    local le="" i
    for i in 0 1 2 3 4 5 6 7; do le+=$(printf '\\x%02x' $(((len >> (8 * i)) & 255))); done
    printf "$le" >"$file"
    printf '%s' "$header" >>"$file"
    head -c "$nbytes" /dev/zero >>"$file"
}

# assert a failed run printed exactly one line on stderr starting with "$1: "
one_line_error() {
    local tool=$1
    [ "${#lines[@]}" -eq 1 ] || { echo "expected one line, got: $output"; return 1; }
    [[ "${lines[0]}" == "$tool: "* ]] || { echo "bad prefix: $output"; return 1; }
}

has_python_module() { python3 -c "import $1" 2>/dev/null; }
