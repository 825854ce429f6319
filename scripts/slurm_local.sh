#!/usr/bin/env bash
# A real, single-node Slurm cluster on this machine (Debian 12, root, no
# systemd), so that sweeps can run through hydra/launcher=submitit_slurm.
#
#   scripts/slurm_local.sh install   # apt packages (quick no-op when present)
#   scripts/slurm_local.sh start     # munged + slurmctld + slurmd, wait for idle
#   scripts/slurm_local.sh status
#   scripts/slurm_local.sh stop      # kills only the daemons that `start` started
#
# State (config, spool, logs, pid files, env.sh) lives in
# ${POSINFO_SLURM_DIR:-/tmp/posinfo-slurm}. `start` also installs the config as
# /etc/slurm/slurm.conf so that sbatch/srun/sinfo find it without any env, and
# writes $DIR/env.sh, which puts scripts/ (our `sacct` stand-in: no accounting
# daemon runs here) first on PATH and exports SLURM_CONF. Source it:
#
#   . "${POSINFO_SLURM_DIR:-/tmp/posinfo-slurm}/env.sh"
#
# Knobs (env): POSINFO_SLURM_DIR, POSINFO_SLURM_TIMEOUT (seconds to wait for
# the node to become idle, default 60), POSINFO_SLURM_CPUS (CPUs the node
# advertises, default max(nproc, 8): jobs here are tiny, and several 1-CPU
# jobs of a sweep should run at once even on a 2-core machine).
set -euo pipefail
case ":$PATH:" in *":/usr/sbin:"*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac

DIR="${POSINFO_SLURM_DIR:-/tmp/posinfo-slurm}"
TIMEOUT="${POSINFO_SLURM_TIMEOUT:-60}"
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ETC_CONF=/etc/slurm/slurm.conf
MARK="# written by posinfo scripts/slurm_local.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { printf 'slurm_local: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_binaries() {
    local b
    for b in slurmctld slurmd sinfo sbatch srun squeue scontrol scancel munged munge; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || return 1
    done
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it starts system daemons)"; }

# ---------------------------------------------------------------- install
cmd_install() {
    if have_binaries; then
        log "slurm and munge already installed"
        return 0
    fi
    need_root
    export DEBIAN_FRONTEND=noninteractive
    # No package lists at all: fetch them first. Stale ones (a 404 on
    # download): the install fails, and we update and retry.
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get update
    fi
    if ! apt-get install -y --no-install-recommends "${PACKAGES[@]}"; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update
        apt-get install -y --no-install-recommends "${PACKAGES[@]}"
    fi
    have_binaries || die "packages installed but binaries still missing"
    log "installed: $(slurmctld -V 2>/dev/null || true)"
}

# ---------------------------------------------------------------- helpers
pidfile() { echo "$DIR/pids/$1.pid"; }

# alive NAME: the recorded pid exists and is still that program
alive() {
    local f pid comm
    f="$(pidfile "$1")"
    [ -s "$f" ] || return 1
    pid="$(cat "$f")"
    [ -d "/proc/$pid" ] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [ "$comm" = "$1" ]
}

# kill_recorded NAME: TERM, wait, then KILL, the pid recorded for NAME
kill_recorded() {
    local name="$1" f pid i
    f="$(pidfile "$name")"
    if alive "$name"; then
        pid="$(cat "$f")"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            [ -d "/proc/$pid" ] || break
            sleep 0.1
        done
        if [ -d "/proc/$pid" ]; then
            log "$name ($pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name ($pid)"
    fi
    rm -f "$f"
}

node_name() { hostname -s; }

node_state() {
    # e.g. idle, mixed, allocated, down*, drained, unknown*
    timeout 5 sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -n1 || true
}

show_logs() {
    local f
    for f in "$DIR"/log/*.log; do
        [ -f "$f" ] || continue
        log "---- tail of $f"
        tail -n 25 "$f" >&2 || true
    done
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

write_env() {
    cat >"$DIR/env.sh" <<EOF
# Source this: puts posinfo's sacct stand-in first on PATH and points Slurm
# clients at the config of the local cluster in $DIR.
export SLURM_CONF="$DIR/slurm.conf"
case ":\$PATH:" in *":$SCRIPTS:"*) ;; *) export PATH="$SCRIPTS:\$PATH" ;; esac
EOF
}

write_conf() {
    local host cpus mem ncpu real
    host="$(node_name)"
    # `slurmd -C` prints e.g. "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24039"
    local probe
    probe="$(slurmd -C 2>/dev/null | head -n1)"
    ncpu="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$probe")"
    real="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$probe")"
    [ -n "$ncpu" ] || ncpu="$(nproc)"
    [ -n "$real" ] || real="$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
    cpus="${POSINFO_SLURM_CPUS:-$(( ncpu > 8 ? ncpu : 8 ))}"
    # leave a little head-room so slurmd never reports less than configured
    mem=$(( real * 95 / 100 ))

    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/pids"
    # Job ids must not repeat across cluster instances: submitit's folders are
    # named after them (hydra: <sweep dir>/.submitit/%j, and this project's sweep
    # dirs are deterministic), and submitit takes an existing <id>_0_result.pkl
    # as the new job's result. A fresh state gets a clock-derived first id; a
    # kept state continues its own sequence.
    if [ ! -s "$DIR/state/job_state" ] || [ ! -s "$DIR/first_job_id" ]; then
        echo $(( ($(date +%s) % 60000) * 1000 + 1 )) >"$DIR/first_job_id"
    fi
    cat >"$DIR/slurm.conf" <<EOF
$MARK
# state folder: $DIR ; detected: $probe
ClusterName=posinfo
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job is held until the job credential expires (default 120 s); 10 s keeps the requeue test quick
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# Cores are the consumable; memory is not tracked (jobs may still ask --mem up
# to RealMemory).
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# schedule batch jobs at submit time (the default defers them up to 3 s)
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# No accounting: finished jobs stay visible to scontrol/squeue (and so to the
# sacct stand-in) for a day.
MinJobAge=86400
FirstJobId=$(cat "$DIR/first_job_id")
ReturnToService=2
# The node may advertise more CPUs than the machine has (see POSINFO_SLURM_CPUS).
SlurmdParameters=config_overrides
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mkdir -p "$(dirname "$ETC_CONF")"
    if [ -f "$ETC_CONF" ] && ! grep -qF "$MARK" "$ETC_CONF"; then
        log "backing up foreign $ETC_CONF to $ETC_CONF.posinfo-bak"
        cp -p "$ETC_CONF" "$ETC_CONF.posinfo-bak"
    fi
    cp "$DIR/slurm.conf" "$ETC_CONF"
    export SLURM_CONF="$DIR/slurm.conf"
}

start_munged() {
    if alive munged && munge_works; then
        log "munged already running ($(cat "$(pidfile munged)"))"
        return 0
    fi
    if munge_works; then
        log "a munged not started by this script is running; using it"
        return 0
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    # a stale socket/pidfile left by a killed munged blocks a new one
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force
    local i
    for i in $(seq 1 100); do
        if [ -s /run/munge/munged.pid ] && munge_works; then
            cp /run/munge/munged.pid "$(pidfile munged)"
            log "munged started ($(cat "$(pidfile munged)"))"
            return 0
        fi
        sleep 0.1
    done
    die "munged did not come up within 10 s (see /var/log/munge/munged.log)"
}

start_daemon() {
    local name="$1" f i
    f="$(pidfile "$name")"
    if alive "$name"; then
        log "$name already running ($(cat "$f"))"
        return 0
    fi
    rm -f "$f"
    # both daemonize; they write their pid file (set in slurm.conf) themselves
    "$name" -f "$DIR/slurm.conf" || { show_logs; die "$name failed to start"; }
    for i in $(seq 1 100); do
        if alive "$name"; then
            log "$name started ($(cat "$f"))"
            return 0
        fi
        sleep 0.1
    done
    show_logs
    die "$name did not write its pid file $f within 10 s"
}

# slurmctld_settles: slurmctld answers (or at least has not died) within 10 s
slurmctld_settles() {
    local i
    for i in $(seq 1 50); do
        alive slurmctld || return 1
        timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' && return 0
        sleep 0.2
    done
    alive slurmctld
}

# ---------------------------------------------------------------- start
cmd_start() {
    need_root
    have_binaries || die "slurm is not installed; run: $0 install"
    mkdir -p "$DIR/pids"
    write_conf
    write_env
    start_munged
    start_daemon slurmctld
    if ! slurmctld_settles; then
        # most likely an unreadable saved state from an earlier run: keep it
        # aside and start from a clean one (job ids then restart at 1)
        local aside
        aside="$DIR/state.bad.$(date +%s)"
        log "slurmctld exited at start-up; moving $DIR/state to $aside and retrying"
        show_logs
        mv "$DIR/state" "$aside"
        write_conf
        start_daemon slurmctld
        slurmctld_settles || { show_logs; die "slurmctld exited at start-up"; }
    fi
    start_daemon slurmd

    local t0 now state resumed=0
    t0=$(date +%s)
    while :; do
        state="$(node_state)"
        case "$state" in
            idle|mixed|allocated|completing)
                log "node $(node_name) is $state after $(( $(date +%s) - t0 )) s"
                break ;;
            down*|drain*|fail*)
                # e.g. left DOWN in the saved state of an earlier run
                if [ "$resumed" = 0 ]; then
                    log "node is '$state'; resuming it"
                    scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi ;;
        esac
        alive slurmctld || { show_logs; die "slurmctld exited"; }
        alive slurmd || { show_logs; die "slurmd exited"; }
        now=$(date +%s)
        if (( now - t0 >= TIMEOUT )); then
            show_logs
            sinfo -N -l >&2 || true
            die "node $(node_name) not idle after ${TIMEOUT} s (last state: '${state:-none}')"
        fi
        sleep 0.2
    done
    log "cluster up; for the sacct stand-in and SLURM_CONF run: . $DIR/env.sh"
    echo "$DIR/env.sh"
}

# ---------------------------------------------------------------- stop
cmd_stop() {
    if [ ! -d "$DIR/pids" ]; then
        log "nothing recorded in $DIR; not running"
        return 0
    fi
    export SLURM_CONF="$DIR/slurm.conf"
    if alive slurmctld; then
        # leave no job steps behind once the daemons are gone
        local jobs
        jobs="$(timeout 10 squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING -o '%A' 2>/dev/null | sort -u | tr '\n' ' ' || true)"
        if [ -n "${jobs// /}" ]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            local i
            for i in $(seq 1 50); do
                [ -z "$(timeout 5 squeue -h -t RUNNING,COMPLETING -o '%A' 2>/dev/null || true)" ] && break
                sleep 0.2
            done
        fi
    fi
    kill_recorded slurmd
    kill_recorded slurmctld
    kill_recorded munged
    log "stopped"
}

# ---------------------------------------------------------------- status
cmd_status() {
    local n rc=0
    echo "state folder: $DIR"
    for n in munged slurmctld slurmd; do
        if alive "$n"; then
            echo "$n: running ($(cat "$(pidfile "$n")"))"
        else
            echo "$n: not running (per $DIR/pids)"; rc=1
        fi
    done
    if [ -f "$DIR/slurm.conf" ] && alive slurmctld; then
        export SLURM_CONF="$DIR/slurm.conf"
        timeout 5 sinfo -N -l 2>&1 || rc=1
        timeout 5 squeue 2>&1 || true
    fi
    return $rc
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    *) echo "usage: $0 {install|start|stop|restart|status}" >&2; exit 2 ;;
esac
