#!/usr/bin/env bash
# Bring up a single-node SLURM (slurmctld + slurmd + munged) on this machine,
# for testing the Snakemake SLURM executor. Meant for root on Debian 12
# (bookworm, slurm-wlm 22.05) without systemd: daemons are started directly.
#
# Idempotent: if munged, slurmctld and slurmd run and `sinfo` reports the node
# idle/mixed/allocated, nothing is done; otherwise only what is missing is started.
#
# Environment knobs (all optional):
#   SLURM_UP_TIMEOUT   seconds to wait for the node to become idle (default 90)
#   SLURM_FAKE_GPUS    number of fake GPUs to declare as GRES (default 2, 0 = none)
#   SLURM_FAKE_GPU_TYPE GRES type (model) of the fake GPUs (default a100), so both
#                      `--gpus=1` and `--gpus=a100:1` / `--gres=gpu:a100:1` are accepted
#   SLURM_PARTITION    default partition name (default debug)
#   SLURM_EXTRA_PARTITIONS extra partitions on the same node (default "cpu gpu",
#                      the names used by profiles/slurm)
#   SLURM_FORCE_CONFIG 1 = rewrite slurm.conf/gres.conf even if they exist
#                      (default 1: this script owns the config)
set -euo pipefail

log() { printf '[slurm-up] %s\n' "$*"; }
die() { printf '[slurm-up] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

TIMEOUT=${SLURM_UP_TIMEOUT:-90}
NGPU=${SLURM_FAKE_GPUS:-2}
GPU_TYPE=${SLURM_FAKE_GPU_TYPE-a100}
PARTITION=${SLURM_PARTITION:-debug}
EXTRA_PARTITIONS=${SLURM_EXTRA_PARTITIONS-cpu gpu}
FORCE_CONFIG=${SLURM_FORCE_CONFIG:-1}

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
GRES_CONF=$CONF_DIR/gres.conf
FAKE_GPU_DIR=/var/lib/slurm/fake-gpus
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
LOG_DIR=/var/log/slurm
CTLD_LOG=$LOG_DIR/slurmctld.log
SLURMD_LOG=$LOG_DIR/slurmd.log
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGE_LOG_DIR=/var/log/munge

node_states() {
    # Prints the node state(s) (e.g. "idle"), or nothing if slurmctld does not answer.
    { timeout 10 sinfo -h -N -o '%T' 2>/dev/null || true; } | sort -u
}

node_usable() {
    local s
    s=$(node_states)
    [[ -n $s ]] && grep -qE '^(idle|mixed|allocated|completing)$' <<<"$s"
}

pid_alive() { # pidfile
    [[ -f $1 ]] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

show_logs() {
    local f
    for f in "$CTLD_LOG" "$SLURMD_LOG" "$MUNGE_LOG_DIR/munged.log"; do
        if [[ -f $f ]]; then
            printf '\n----- tail -n 30 %s -----\n' "$f" >&2
            tail -n 30 "$f" >&2 || true
        else
            printf '\n----- %s: missing -----\n' "$f" >&2
        fi
    done
    printf '\n----- sinfo -N -l -----\n' >&2
    timeout 10 sinfo -N -l >&2 2>&1 || true
    printf '\n----- scontrol show node -----\n' >&2
    timeout 10 scontrol show node >&2 2>&1 || true
}

t_start=$(date +%s)
# All three daemons must run here (slurmctld keeps reporting a node "idle" for
# SlurmdTimeout after its slurmd died), and sinfo takes ~10 s to give up when no
# slurmctld runs, so ask it only if one does.
if command -v sinfo >/dev/null 2>&1 && pidof slurmctld >/dev/null 2>&1 \
    && pidof slurmd >/dev/null 2>&1 && pidof munged >/dev/null 2>&1 && node_usable; then
    log "SLURM already up (node state: $(node_states | tr '\n' ' ')); nothing to do"
    exit 0
fi

# ---------------------------------------------------------------- packages
missing=()
for bin in slurmctld slurmd sinfo srun munged; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if ((${#missing[@]})); then
    log "missing binaries: ${missing[*]} -> installing slurm-wlm munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q slurm-wlm munge
else
    log "slurm-wlm and munge already installed ($(slurmd -V))"
fi

# ---------------------------------------------------------------- munge
if ! id munge >/dev/null 2>&1; then
    die "user 'munge' missing although munge is installed"
fi
mkdir -p /etc/munge "$MUNGE_RUN" "$MUNGE_LOG_DIR" /var/lib/munge
if [[ ! -s $MUNGE_KEY ]]; then
    log "creating munge key $MUNGE_KEY"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$MUNGE_KEY" --force
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge "$MUNGE_KEY" "$MUNGE_RUN" "$MUNGE_LOG_DIR" /var/lib/munge
chmod 0700 /etc/munge
chmod 0400 "$MUNGE_KEY"
chmod 0755 "$MUNGE_RUN"

if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
else
    log "starting munged (as user munge)"
    rm -f "$MUNGE_RUN/munge.socket.2" "$MUNGE_RUN/munge.socket.2.lock" "$MUNGE_RUN/munged.pid"
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 1 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.5
    done
    munge -n | unmunge >/dev/null || { show_logs; die "munged does not work"; }
fi

# ---------------------------------------------------------------- config
HOST=$(hostname -s 2>/dev/null || uname -n)
HOST=${HOST%%.*}
NCPU=$(nproc)
# Same number as the 'total' of \`free -m\` (procps may be missing on minimal images).
MEM_TOTAL=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
# Leave headroom: slurmd drains the node if RealMemory exceeds what it detects.
REAL_MEM=$((MEM_TOTAL - MEM_TOTAL / 20))
if ((REAL_MEM > MEM_TOTAL - 512)); then REAL_MEM=$((MEM_TOTAL - 512)); fi
if ((REAL_MEM < 256)); then REAL_MEM=256; fi

mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
chmod 0755 "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"

if [[ $FORCE_CONFIG == 1 || ! -f $CONF ]]; then
    gres_node="" gres_types="" gpu_spec=""
    if ((NGPU > 0)); then
        # slurm 22.05 ignores file-less GPUs ("count reported lower than configured
        # (0 < N)", node INVAL), so give each fake GPU a character device. They are
        # copies of /dev/null (c 1 3) outside /dev, so nothing mistakes them for GPUs.
        mkdir -p "$FAKE_GPU_DIR"
        for ((i = 0; i < NGPU; i++)); do
            f=$FAKE_GPU_DIR/nvidia$i
            if [[ ! -c $f ]]; then
                rm -f "$f"
                if ! mknod -m 0666 "$f" c 1 3 2>/dev/null; then
                    log "WARNING: mknod $f failed; using a regular file (slurmd logs an error but counts it)"
                    : >"$f"
                fi
            fi
        done
        gres_types="GresTypes=gpu"
        gpu_spec=${GPU_TYPE:+${GPU_TYPE}:}${NGPU}
        gres_node="Gres=gpu:${gpu_spec}"
    fi
    log "writing $CONF (node $HOST: CPUs=$NCPU RealMemory=${REAL_MEM}MB, fake GPUs: ${gpu_spec:-none}, partitions: $PARTITION(default) $EXTRA_PARTITIONS)"
    {
        cat <<EOF
# Generated by tests/slurm/up.sh -- single-node test cluster, do not use in production.
ClusterName=saeflow-test
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
${gres_types}
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmdTimeout=300
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}
SlurmctldLogFile=${CTLD_LOG}
SlurmdLogFile=${SLURMD_LOG}
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${REAL_MEM} ${gres_node} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF
        for p in $EXTRA_PARTITIONS; do
            [[ $p == "$PARTITION" ]] && continue
            echo "PartitionName=${p} Nodes=${HOST} Default=NO MaxTime=INFINITE State=UP"
        done
    } >"$CONF"
    if ((NGPU > 0)); then
        log "writing $GRES_CONF (${NGPU} fake GPUs: $FAKE_GPU_DIR/nvidia[0-$((NGPU - 1))])"
        cat >"$GRES_CONF" <<EOF
# Generated by tests/slurm/up.sh: fake GPUs (device nodes are copies of /dev/null).
AutoDetect=off
Name=gpu ${GPU_TYPE:+Type=${GPU_TYPE} }File=${FAKE_GPU_DIR}/nvidia[0-$((NGPU - 1))]
EOF
    else
        rm -f "$GRES_CONF"
    fi
else
    log "keeping existing $CONF"
fi

# ---------------------------------------------------------------- daemons
if pid_alive "$CTLD_PID"; then
    log "slurmctld already running (pid $(cat "$CTLD_PID")); reconfiguring"
    timeout 20 scontrol reconfigure || true
else
    log "starting slurmctld (log: $CTLD_LOG)"
    slurmctld
fi

if pid_alive "$SLURMD_PID"; then
    log "slurmd already running (pid $(cat "$SLURMD_PID"))"
else
    log "starting slurmd (log: $SLURMD_LOG)"
    slurmd
fi

log "waiting up to ${TIMEOUT}s for node $HOST to become idle"
deadline=$(($(date +%s) + TIMEOUT))
resumed=0
while true; do
    states=$(node_states | tr '\n' ' ')
    if node_usable; then
        break
    fi
    if [[ $states =~ inval ]]; then
        show_logs
        die "slurmctld rejected the node registration (state '$states'; see Reason above)"
    fi
    if [[ $resumed == 0 && $states =~ (down|drain) ]]; then
        log "node state '$states'; trying 'scontrol update NodeName=$HOST State=RESUME'"
        timeout 10 scontrol update NodeName="$HOST" State=RESUME || true
        resumed=1
    fi
    if (($(date +%s) >= deadline)); then
        pid_alive "$CTLD_PID" || echo "slurmctld is NOT running" >&2
        pid_alive "$SLURMD_PID" || echo "slurmd is NOT running" >&2
        show_logs
        die "node not idle after ${TIMEOUT}s (last state: '${states:-no answer from slurmctld}')"
    fi
    sleep 1
done
log "node state: $(node_states | tr '\n' ' ')"
sinfo

log "smoke check: srun -N1 hostname"
if ! out=$(timeout 60 srun -N1 -t 1 hostname 2>&1); then
    printf '%s\n' "$out" >&2
    show_logs
    die "srun smoke check failed"
fi
log "srun -> $out"
log "SLURM up in $(($(date +%s) - t_start))s"
