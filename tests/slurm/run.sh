#!/bin/sh
# tests/slurm/run.sh: examples/slurm/ on a real Slurm, brought up here.
#
# Installs Debian's slurm-wlm daemons and munge when they are missing (root
# and apt-get needed; otherwise the test is skipped with a message, exit 0),
# starts a private munged and a single-node cluster on localhost (slurmctld +
# slurmd, a minimal slurm.conf with two stand-in GPUs as gres, all files in
# a temporary directory, ports chosen free), prunes tests/data/tiny-llama-6m
# through sbatch jobs, sequential (a dependency chain, --gres=gpu:1 jobs) and
# one-shot (a job array over the layers), and checks that every output file
# equals the single-machine `make -f examples/Makefile` run's, byte for byte
# (model.tbm but for the wall-clock seconds tb-fisher records in the recipe).
# The daemons are stopped (by their pid files) and everything removed at exit.
#
#   make test-slurm        (TB_BIN: the tools, default build/bin)
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
TB=${TB_BIN:-$root/build/bin}
model=$root/tests/data/tiny-llama-6m
say() { echo "slurm-test: $*"; }
skip() { say "SKIPPED: $*"; exit 0; }

need="slurmctld slurmd sbatch munged"
missing=""
for c in $need; do command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || missing="$missing $c"; done
if [ -n "$missing" ]; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || skip "no$missing, and no root apt-get to install Debian's slurm-wlm and munge"
    say "installing slurmctld slurmd slurm-client munge (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge \
        >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge \
            >/dev/null 2>&1; } || skip "apt-get could not install slurm-wlm and munge"
fi
PATH=$PATH:/usr/sbin
[ "$(id -u)" = 0 ] || skip "the test daemons run as root (SlurmUser=root); run as root"
for t in tb-inspect tb-tokenize tb-fisher tb-score tb-nm tb-pack tb-recon tb-merge; do
    [ -x "$TB/$t" ] || { say "$TB/$t missing: build first (make)"; exit 1; }
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/tb-slurm.XXXXXX")
chmod 755 "$dir"
cleanup() {
    for p in slurmd slurmctld munged; do
        [ -f "$dir/$p.pid" ] && kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
    done
    sleep 1
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# a free TCP port on localhost
free_port() {
    p=$1
    while (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || ss -ltn 2>/dev/null | grep -q ":$p "; do p=$((p + 1)); done
    echo "$p"
}

# munge: a private key and socket
dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 2>/dev/null
chmod 600 "$dir/munge.key"
munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" --log-file="$dir/munged.log" \
    --pid-file="$dir/munged.pid" --seed-file="$dir/munged.seed" || { cat "$dir/munged.log"; exit 1; }

host=$(hostname -s)
p1=$(free_port $((20000 + $$ % 5000)))
p2=$(free_port $((p1 + 1)))
mkdir -p "$dir/state" "$dir/spool"
touch "$dir/gpu0" "$dir/gpu1" # stand-ins: Slurm schedules --gres=gpu by them
cat >"$dir/slurm.conf" <<CONF
ClusterName=tbtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$p1
SlurmdPort=$p2
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=2000 Gres=gpu:2 State=UNKNOWN
PartitionName=tb Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/gpu[0-1]\n' "$host" "$dir" >"$dir/gres.conf"
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" && slurmd -f "$SLURM_CONF" || { cat "$dir"/*.log; exit 1; }
i=0
until [ "$(sinfo -h -o %t 2>/dev/null)" = idle ]; do
    i=$((i + 1))
    [ $i -lt 60 ] || { say "the node never became idle:"; sinfo; tail -n 20 "$dir"/slurm*.log; exit 1; }
    sleep 0.5
done
say "single-node Slurm up ($(sinfo -h -o '%P %D %t %G'), slurmctld port $p1)"

# the same small run both ways
export TB WINDOWS=4 SEQLEN=64 RECON_STEPS=4
fail=0
# the pruned shards byte for byte; the index too, but for the wall-clock
# "seconds" tb-fisher records (the recipe copies it)
digests() { (cd "$1" && sha256sum layer.*.tb && grep -v '"seconds"' model.tbm | sha256sum); }
check() { # NAME OUT REF_DIGESTS
    got=$(digests "$2")
    if [ "$got" = "$3" ]; then say "$1: the $(($(echo "$got" | wc -l) - 1)) shards and model.tbm equal the single-machine run's, byte for byte"
    else say "$1: FAILED, files differ:"; echo "$3" >"$dir/ref"; echo "$got" >"$dir/got"; diff "$dir/ref" "$dir/got" || true; fail=1; fi
}
for mode in 1 0; do
    out=$dir/out-$mode
    steps=4
    [ "$mode" = 0 ] && steps=0
    make --no-print-directory -s -f "$root/examples/Makefile" MODEL="$model" OUT="$out" SEQUENTIAL=$mode \
        RECON_STEPS=$steps >"$dir/make.log" 2>&1 || { cat "$dir/make.log"; exit 1; }
    ref=$(digests "$out")
    rm -rf "$out"
    t0=$(date +%s)
    SEQUENTIAL=$mode RECON_STEPS=$steps GRES=gpu:1 WAIT=1 "$root/examples/slurm/submit.sh" "$model" "$out" \
        >"$dir/submit.log" 2>&1 || { cat "$dir/submit.log"; tail -n 30 "$out"/slurm/*.out; fail=1; continue; }
    name=$([ "$mode" = 1 ] && echo "sequential (chain of $(grep -c tb-layer- "$dir/submit.log") layer jobs)" ||
        echo "one-shot (job array)")
    say "$name: $(grep -c . "$dir/submit.log") submissions, $(($(date +%s) - t0)) s"
    check "$name" "$out" "$ref"
done
[ "$fail" = 0 ] && say "passed" || { say "FAILED"; exit 1; }
