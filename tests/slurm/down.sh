#!/usr/bin/env bash
# Stop the single-node test SLURM started by tests/slurm/up.sh: cancel jobs, stop
# slurmd and slurmctld (and munged unless KEEP_MUNGE=1). Safe to call when nothing runs.
# Config, state and logs stay in place (/etc/slurm, /var/lib/slurm, /var/log/slurm);
# PURGE=1 also removes the files up.sh generates (slurm.conf, gres.conf, state, spool,
# fake GPU device nodes, logs), so the next up.sh starts from scratch.
set -euo pipefail

log() { printf '[slurm-down] %s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || { echo "[slurm-down] ERROR: must run as root" >&2; exit 1; }

CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

# stop_daemon NAME PIDFILE: SIGTERM the pid in PIDFILE (or, without a usable pid
# file, the processes whose executable name is exactly NAME), SIGKILL after 15 s.
stop_daemon() {
    local name=$1 pidfile=$2 pids="" pid
    if [[ -f $pidfile ]]; then
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            pids=$pid
        fi
    fi
    if [[ -z $pids ]]; then
        pids=$(pidof -x "$name" 2>/dev/null || true)
    fi
    if [[ -z $pids ]]; then
        log "$name: not running"
        rm -f "$pidfile"
        return 0
    fi
    log "$name: stopping (pid $pids)"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 30); do
        local alive=""
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive+=" $pid"; done
        if [[ -z $alive ]]; then
            log "$name: stopped"
            rm -f "$pidfile"
            return 0
        fi
        sleep 0.5
    done
    log "$name: still alive after 15s, sending SIGKILL to$alive"
    # shellcheck disable=SC2086
    kill -KILL $alive 2>/dev/null || true
    rm -f "$pidfile"
}

if command -v squeue >/dev/null 2>&1 && pidof slurmctld >/dev/null 2>&1 && timeout 10 sinfo -h >/dev/null 2>&1; then
    jobs=$(timeout 10 squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED -o '%A' 2>/dev/null | tr '\n' ' ' || true)
    if [[ -n ${jobs// /} ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs || true
        for _ in $(seq 1 20); do
            [[ -z $(timeout 5 squeue -h -t RUNNING,COMPLETING -o '%A' 2>/dev/null || true) ]] && break
            sleep 0.5
        done
    else
        log "no active jobs"
    fi
else
    log "slurmctld not answering; skipping job cancellation"
fi

stop_daemon slurmd "$SLURMD_PID"
# Job steps whose slurmd is gone (normally none left after scancel).
stray=$(pidof slurmstepd 2>/dev/null || true)
if [[ -n $stray ]]; then
    log "killing leftover slurmstepd: $stray"
    # shellcheck disable=SC2086
    kill -KILL $stray 2>/dev/null || true
fi
stop_daemon slurmctld "$CTLD_PID"

if [[ ${KEEP_MUNGE:-0} == 1 ]]; then
    log "munged: left running (KEEP_MUNGE=1)"
else
    stop_daemon munged "$MUNGE_PID"
fi

if [[ ${PURGE:-0} == 1 ]]; then
    log "PURGE=1: removing generated config, state, spool, fake GPUs and logs"
    rm -rf /etc/slurm/slurm.conf /etc/slurm/gres.conf \
        /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/lib/slurm/fake-gpus \
        /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log
fi
log "done"
