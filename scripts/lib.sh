# shellcheck shell=bash
# Helpers shared by scripts/quickstart, scripts/test and scripts/build-images.
# Source it; it does not change shell options of its own.

NBF_REPO=${NBF_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# nbfleet and everything it needs live in a virtual environment of the project's own, never in
# the system Python (Debian's is externally managed, PEP 668). NBFLEET_VENV moves it;
# NBFLEET_PYTHON names the interpreter to build it from (default: Debian's /usr/bin/python3,
# whatever else PATH offers). NBF_PYTHON is the venv's python once nbf_venv has run.
NBF_VENV=${NBFLEET_VENV:-$NBF_REPO/.venv}
NBF_PYTHON=$NBF_VENV/bin/python
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

# nbf_venv: makes sure the project's venv exists, made from NBFLEET_PYTHON (default Debian's
# /usr/bin/python3, with python3-venv from apt), and puts its bin first on PATH so this
# script's children (nbfleet-*, weed, pytest) are the venv's. A venv made from another
# interpreter, or one that no longer runs, is made again.
nbf_venv() {
    local base=${NBFLEET_PYTHON:-/usr/bin/python3} real
    if [[ -z ${NBFLEET_PYTHON:-} && ! -x $base ]]; then
        nbf_apt_install python3 python3-venv
    fi
    [[ -x $base ]] || nbf_die "NBFLEET_PYTHON=$base is not an executable Python"
    "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        nbf_die "$base is Python $("$base" -c 'import platform; print(platform.python_version())'); nbfleet needs 3.11 or newer (NBFLEET_PYTHON picks another)"
    real=$(readlink -f "$base")
    if [[ -x $NBF_PYTHON && $(cat "$NBF_VENV/.nbfleet-base" 2>/dev/null) == "$real" ]] &&
        "$NBF_PYTHON" -c 'import pip' 2>/dev/null; then
        export PATH="$NBF_VENV/bin:$PATH" VIRTUAL_ENV=$NBF_VENV
        return 0
    fi
    # Debian ships venv without ensurepip unless python3-venv is installed.
    if [[ $real == /usr/bin/* ]] && ! "$base" -c 'import ensurepip' 2>/dev/null; then
        nbf_apt_install python3-venv
    fi
    nbf_log "creating the virtual environment $NBF_VENV from $real"
    "$base" -m venv --clear "$NBF_VENV" </dev/null >&2 ||
        nbf_die "$base -m venv $NBF_VENV failed (Debian: apt-get install python3-venv)"
    echo "$real" >"$NBF_VENV/.nbfleet-base"
    rm -f "$NBF_VENV"/.nbfleet-installed*
    export PATH="$NBF_VENV/bin:$PATH" VIRTUAL_ENV=$NBF_VENV
}

# nbf_venv_install [EXTRA]: editable install of this checkout into the venv (with extras such
# as "test"). Skipped when the venv already holds this checkout installed from the same
# pyproject.toml with the same extras: the install is editable, so code changes need nothing.
nbf_venv_install() {
    local extra=${1:-} spec=$NBF_REPO stamp want
    nbf_venv
    [[ -n $extra ]] && spec="$NBF_REPO[$extra]"
    stamp=$NBF_VENV/.nbfleet-installed${extra:+-$extra}
    want="$NBF_REPO $(sha256sum "$NBF_REPO/pyproject.toml" | cut -d' ' -f1)"
    if [[ $(cat "$stamp" 2>/dev/null) == "$want" && -x $NBF_VENV/bin/nbfleet-scheduler ]]; then
        return 0
    fi
    nbf_log "pip install -e $spec (into $NBF_VENV)"
    "$NBF_PYTHON" -m pip install -q -e "$spec" </dev/null >&2
    echo "$want" >"$stamp"
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

# nbf_start_postgres DIR [ADDRESS]: a throwaway PostgreSQL cluster in DIR (which it makes), for
# tests. Debian's postgresql package (installed when missing) gives initdb and pg_ctl; no system
# service is involved. PostgreSQL refuses to run as root, so the cluster belongs to the
# unprivileged system user nbfleet-postgres (created when missing). It listens on ADDRESS
# (default 127.0.0.1; an IPv4 address) at a free port (and on a socket in DIR), trusts local
# connections (and, on another ADDRESS, those from the subnets it is on: a test's network
# namespaces), and runs without fsync: its data is thrown away at the end.
# Sets NBF_POSTGRES_URL (superuser nbfleet, database postgres); stop it with nbf_stop_postgres
# DIR. Dies with the server's log tail if it does not start.
nbf_start_postgres() {
    local dir=$1 listen=${2:-127.0.0.1} user=nbfleet-postgres bindir port
    nbf_apt_install postgresql
    bindir=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
    [[ -x $bindir/pg_ctl ]] || nbf_die "postgresql is installed but no pg_ctl under /usr/lib/postgresql"
    id -u "$user" >/dev/null 2>&1 ||
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$user"
    mkdir -p "$dir"
    chown "$user:" "$dir"
    chmod 0700 "$dir"
    # A free port now; the server takes it a moment later (nothing else here races for it).
    port=$("$NBF_PYTHON" -c 'import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
print(s.getsockname()[1])' "$listen")
    runuser -u "$user" -- "$bindir/initdb" -D "$dir/data" -U nbfleet --auth=trust \
        --encoding=UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 </dev/null || {
        tail -n 40 "$dir/initdb.log" >&2
        nbf_die "initdb of the test PostgreSQL cluster in $dir failed"
    }
    if [[ $listen != 127.0.0.1 ]]; then
        echo "host all all samenet trust" >>"$dir/data/pg_hba.conf"
    fi
    if ! runuser -u "$user" -- "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-c listen_addresses=$listen -p $port -c unix_socket_directories=$dir \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
            -c max_wal_size=256MB -c max_connections=200" start >/dev/null </dev/null; then
        echo "---- last lines of $dir/postgres.log ----" >&2
        tail -n 40 "$dir/postgres.log" >&2 || true
        nbf_die "the test PostgreSQL cluster in $dir did not start"
    fi
    NBF_POSTGRES_URL="postgresql://nbfleet@$listen:$port/postgres"
    nbf_log "PostgreSQL is up: $NBF_POSTGRES_URL (data and log in $dir)"
}

# nbf_stop_postgres DIR: stops the cluster nbf_start_postgres made in DIR and removes DIR.
nbf_stop_postgres() {
    local dir=$1 bindir
    bindir=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
    if [[ -f $dir/data/postmaster.pid ]]; then
        runuser -u nbfleet-postgres -- "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop \
            >/dev/null 2>&1 </dev/null || nbf_log "pg_ctl stop in $dir failed"
    fi
    rm -rf "$dir"
}
