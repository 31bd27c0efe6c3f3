# devkit-env.sh - source on the GPU machine: unpack devkit.sh's libraries.
#   . bench/gpu/devkit-env.sh [DIR]
# A CUSPARSELT=1 build also needs libcusparseLt.so.0, which does not travel
# (234 MB; 155 MB xz, over a device call's 64 MiB): the machine's image has
# the nvidia-cusparselt-cu13 wheel, whose lib folder joins the path here
# (TB_CUSPARSELT_LIB names the file found, empty if none).
_kit=${1:-.devwork/kit}
mkdir -p /tmp/tbkit && tar -C /tmp/tbkit -xJf "$_kit/libs.tar.xz"
export LD_LIBRARY_PATH=/tmp/tbkit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
_csl=$(python3 -m pip show nvidia-cusparselt-cu13 2>/dev/null | awk '/^Location:/ {print $2}')
TB_CUSPARSELT_LIB=
[ -n "$_csl" ] && TB_CUSPARSELT_LIB=$(find "$_csl/nvidia" -name libcusparseLt.so.0 2>/dev/null | head -1)
if [ -n "$TB_CUSPARSELT_LIB" ]; then
    export LD_LIBRARY_PATH=$(dirname "$TB_CUSPARSELT_LIB"):$LD_LIBRARY_PATH
fi
export TB_CUSPARSELT_LIB
unset _kit _csl
