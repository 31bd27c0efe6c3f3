#!/bin/sh
# Install what tensorbit needs to build and test.
#   Debian/Ubuntu: installs with apt-get (as root, or through sudo).
#   elsewhere:     prints the dnf / brew equivalents and exits 1.
# Python packages for the interop tests (safetensors, tokenizers, numpy) are
# installed with pip unless --no-python is given.
set -eu

APT_PKGS="build-essential pkg-config libcjson-dev libopenblas-dev liblapacke-dev libcmocka-dev bats python3 python3-pip clang"
DNF_PKGS="gcc make pkgconf-pkg-config cjson-devel openblas-devel lapack-devel libcmocka-devel bats python3-pip clang"
BREW_PKGS="pkg-config cjson openblas lapack cmocka bats-core python llvm"
PIP_PKGS="safetensors tokenizers numpy"

python=1
[ "${1:-}" = "--no-python" ] && python=0

id=""; like=""
if [ -r /etc/os-release ]; then
    . /etc/os-release
    id=${ID:-}; like=${ID_LIKE:-}
fi

case " $id $like " in
*" debian "* | *" ubuntu "*)
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: ${PRETTY_NAME:-$id}: apt-get install $APT_PKGS"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $APT_PKGS >/dev/null
    # libFuzzer for make fuzz: in libclang-rt-dev where the distribution splits it out
    if apt-cache show libclang-rt-dev >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libclang-rt-dev >/dev/null
    fi
    ;;
*)
    echo "setup: not a Debian/Ubuntu system (${id:-unknown}); install by hand:"
    echo "  Fedora/RHEL: sudo dnf install $DNF_PKGS"
    echo "  macOS:       brew install $BREW_PKGS"
    echo "  Python:      python3 -m pip install $PIP_PKGS"
    exit 1
    ;;
esac

if [ "$python" -eq 1 ]; then
    # Debian 12 marks the system Python as externally managed: prefer the
    # user's python3 (a venv or pyenv), else allow pip beside apt's packages.
    python3 -m pip install -q $PIP_PKGS 2>/dev/null ||
        python3 -m pip install -q --break-system-packages $PIP_PKGS
fi
echo "setup: done. Next: make && make test"
