# devkit-env.sh - source on the GPU machine: unpack devkit.sh's libraries.
#   . bench/gpu/devkit-env.sh [DIR]
_kit=${1:-.devwork/kit}
mkdir -p /tmp/tbkit && tar -C /tmp/tbkit -xJf "$_kit/libs.tar.xz"
export LD_LIBRARY_PATH=/tmp/tbkit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
