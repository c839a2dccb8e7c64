#!/usr/bin/env bash
# hpcflare dev cluster: stop only the daemons dev-cluster-up.sh started (pid files in $HPC_STATE/run).
# Idempotent: missing/stale pid files are ignored.  Set KEEP_JOBS=1 to skip
# cancelling jobs first.
set -uo pipefail
STATE=${HPC_STATE:-/tmp/hpcflare-slurm}
RUN=$STATE/run
log() { echo "[dev-cluster-down $(date +%T)] $*"; }

running() {  # a zombie (already exited, not yet reaped by init) counts as stopped
  local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
stop() {  # stop PIDFILE COMM
  local f=$1 comm=$2 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if [ -d "/proc/$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$comm" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do running "$pid" || break; sleep 0.25; done
    if running "$pid"; then log "$comm ($pid) did not exit, SIGKILL"; kill -KILL "$pid"; fi
    log "stopped $comm (pid $pid)"
  fi
  rm -f "$f"
}

# cancel jobs while the controller is still up (else slurmstepds linger)
if [ "${KEEP_JOBS:-0}" != 1 ] && [ -s "$RUN/slurmctld.pid" ] && scontrol ping >/dev/null 2>&1; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    log "cancelling jobs: $(echo $jobs)"; scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 40); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.25; done
  fi
fi

for f in "$RUN"/slurmd-*.pid; do [ -e "$f" ] && stop "$f" slurmd; done
stop "$RUN/slurmctld.pid" slurmctld
stop "$RUN/slurmdbd.pid"  slurmdbd
stop "$RUN/mariadb.pid"   mariadbd
stop "$RUN/munged.pid"    munged
log "down"
