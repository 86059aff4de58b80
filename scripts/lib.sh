# shellcheck shell=bash
# Helpers shared by scripts/quickstart, scripts/test and scripts/build-images.
# Source it; it does not change shell options of its own.

NBF_REPO=${NBF_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
NBF_PYTHON=${NBF_PYTHON:-$(command -v python3 || command -v python)}
_nbf_apt_updated=0
# Everything here runs as root on purpose; pip need not warn about it every time.
export PIP_ROOT_USER_ACTION=ignore

nbf_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
nbf_die() { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

nbf_require_root() {
    [[ $(id -u) == 0 ]] || nbf_die "$(basename "$0") drives dockerd and apt: run it as root"
}

# nbf_apt_install PKG...: installs the Debian packages that are not installed yet.
# apt-get update runs once, and only when something is missing.
nbf_apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] \
            || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || nbf_die "missing packages ${missing[*]} and no apt-get"
    if ((!_nbf_apt_updated)); then
        nbf_log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >&2
        _nbf_apt_updated=1
    fi
    nbf_log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" </dev/null >&2
}

# nbf_pip_install_repo [EXTRA]: editable install of this checkout (with extras such as
# "test"), skipped when this very checkout is already installed with its console scripts.
nbf_pip_install_repo() {
    local extra=${1:-} spec="$NBF_REPO"
    [[ -n $extra ]] && spec="$NBF_REPO[$extra]"
    local shown
    shown=$("$NBF_PYTHON" -m pip show nbfleet 2>/dev/null || true)
    if [[ -z $extra ]] && grep -qx "Editable project location: $NBF_REPO" <<<"$shown" \
        && command -v nbfleet-scheduler >/dev/null; then
        return 0
    fi
    nbf_log "pip install -e $spec"
    "$NBF_PYTHON" -m pip install -q -e "$spec" </dev/null >&2
    hash -r
}

nbf_docker_ok() { timeout 20 docker info >/dev/null 2>&1; }

# nbf_ensure_dockerd STATE_DIR: makes sure a dockerd answers. When none does, installs
# docker.io if needed and starts dockerd in the background, its log and pid in STATE_DIR.
# Sets NBF_DOCKERD_STARTED=1 when this call started it (the caller decides whether to stop
# it later with nbf_stop_dockerd). Dies with the daemon's log tail if it does not come up.
nbf_ensure_dockerd() {
    local state=$1 i pid
    NBF_DOCKERD_STARTED=0
    if nbf_docker_ok; then
        return 0
    fi
    command -v dockerd >/dev/null || nbf_apt_install docker.io
    command -v docker >/dev/null || nbf_apt_install docker.io
    mkdir -p "$state"
    # A dockerd that died without cleaning up leaves its pid file behind and refuses to start.
    if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    nbf_log "starting dockerd (log: $state/dockerd.log)"
    # NBF_DOCKERD_ARGS: extra dockerd flags (a second daemon on its own socket, for testing
    # these scripts next to a dockerd that must not be disturbed). Never give such a second
    # daemon "--bridge none": dockerd then deletes the shared docker0 interface.
    # shellcheck disable=SC2086
    setsid dockerd ${NBF_DOCKERD_ARGS:-} >>"$state/dockerd.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$state/dockerd.pid"
    for ((i = 0; i < 60; i++)); do
        if nbf_docker_ok; then
            NBF_DOCKERD_STARTED=1
            nbf_log "dockerd is up (pid $pid)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 1
    done
    echo "---- last lines of $state/dockerd.log ----" >&2
    tail -n 40 "$state/dockerd.log" >&2 || true
    rm -f "$state/dockerd.pid"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        nbf_die "dockerd did not answer 'docker info' within 60 s (log: $state/dockerd.log)"
    fi
    nbf_die "dockerd exited at start (log: $state/dockerd.log)"
}

# nbf_stop_pid NAME PIDFILE [SECONDS]: TERM, wait, then KILL the process in PIDFILE.
# Returns 1 when nothing was running.
nbf_stop_pid() {
    local name=$1 pidfile=$2 wait=${3:-20} pid i
    [[ -f $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"
        return 1
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait * 5; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        nbf_log "$name (pid $pid) ignored TERM for ${wait}s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    nbf_log "stopped $name (pid $pid)"
}

nbf_stop_dockerd() {
    local state=$1
    nbf_stop_pid dockerd "$state/dockerd.pid" 30 || true
}

# nbf_pid_alive PIDFILE: true when PIDFILE names a live process.
nbf_pid_alive() {
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# nbf_wait_http URL SECONDS WHAT [LOGFILE]: polls URL until it answers 2xx; on timeout says
# what it was waiting for and shows LOGFILE's tail.
nbf_wait_http() {
    local url=$1 seconds=$2 what=$3 log=${4:-} i
    for ((i = 0; i < seconds * 2; i++)); do
        curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
        sleep 0.5
    done
    if [[ -n $log && -f $log ]]; then
        echo "---- last lines of $log ----" >&2
        tail -n 40 "$log" >&2
    fi
    nbf_die "$what did not answer $url within ${seconds}s"
}
