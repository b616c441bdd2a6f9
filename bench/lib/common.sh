# Shared helpers of bench/run.sh (sourced, not run): logging, background
# processes stopped by their PIDs, bounded waits, the results file.
#
# Every daemon runs under `timeout` as a last line of defence: should this
# script itself be killed with SIGKILL (no trap runs), each daemon still
# ends after BENCH_MAX_SECONDS.  timeout puts the daemon in its own process
# group and relays TERM to the whole group, so the per-connection children
# of socat and sshd end with it.

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

now_ns() { date +%s%N; }

# --- background processes ----------------------------------------------------------------

declare -A BG_PID=()   # name -> PID of the timeout wrapper
BG_ORDER=()            # names in start order, stopped in reverse

# bg_start NAME CMD... : runs CMD in the background under timeout, output to
# $LOGDIR/NAME.log.  The PID is in BG_PID[NAME].
bg_start() {
  local name="$1"; shift
  [ -z "${BG_PID[$name]:-}" ] || die "bg_start: $name already running"
  timeout -k 5 "$BENCH_MAX_SECONDS" "$@" >"$LOGDIR/$name.log" 2>&1 </dev/null &
  BG_PID[$name]=$!
  BG_ORDER+=("$name")
}

# The daemon itself (the child of its timeout wrapper), for figures that
# belong to one process.
bg_main_pid() {
  local w="${BG_PID[$1]:?no process $1}" c
  c="$(cat "/proc/$w/task/$w/children" 2>/dev/null)" || true
  set -- $c
  echo "${1:-$w}"
}

bg_alive() { [ -n "${BG_PID[$1]:-}" ] && kill -0 "${BG_PID[$1]}" 2>/dev/null; }

# bg_stop NAME : TERM to the wrapper (relayed to the daemon's group), up to
# 5 s of grace, then KILL to every remaining process of its tree by PID.
bg_stop() {
  local name="$1" pid="${BG_PID[$1]:-}" tree i p
  [ -n "$pid" ] || return 0
  tree="$(proc_tree "$pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; ++i)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  for p in $tree; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$pid" 2>/dev/null || true
  unset "BG_PID[$name]"
}

# bg_stop_many NAME... : bg_stop for many at once: TERM to all, one shared
# grace period of up to 10 s, then KILL to what is left.
bg_stop_many() {
  local name pid i trees=""
  for name in "$@"; do
    pid="${BG_PID[$name]:-}"
    [ -n "$pid" ] || continue
    trees+=" $pid $(cat "/proc/$pid/task/$pid/children" 2>/dev/null || true)"
    kill -TERM "$pid" 2>/dev/null || true
  done
  for ((i = 0; i < 100; ++i)); do
    pid=""
    for name in "$@"; do
      bg_alive "$name" && { pid=1; break; }
    done
    [ -n "$pid" ] || break
    sleep 0.1
  done
  for pid in $trees; do kill -KILL "$pid" 2>/dev/null || true; done
  for name in "$@"; do
    [ -n "${BG_PID[$name]:-}" ] && { wait "${BG_PID[$name]}" 2>/dev/null || true; }
    unset "BG_PID[$name]"
  done
}

bg_stop_all() {
  local i
  for ((i = ${#BG_ORDER[@]} - 1; i >= 0; --i)); do bg_stop "${BG_ORDER[$i]}"; done
  BG_ORDER=()
}

# --- waits, all bounded ---------------------------------------------------------------------

# wait_until SECONDS CMD... : retries CMD every 0.1 s; 1 when time runs out.
wait_until() {
  local deadline=$(( $(now_ns) + $1 * 1000000000 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(now_ns)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

tcp_listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
udp_bound() { [ -n "$(ss -Hlun "sport = :$1" 2>/dev/null)" ]; }

# wait_tcp PORT NAME : waits up to 15 s for a listener; dies showing the log.
wait_tcp() {
  wait_until 15 tcp_listening "$1" && return 0
  tail -n 20 "$LOGDIR/$2.log" >&2 || true
  die "$2 did not listen on 127.0.0.1:$1 within 15 s"
}

# port_free PORT : nothing listens on it, TCP or UDP.
port_free() { ! tcp_listening "$1" && ! udp_bound "$1"; }

# --- /proc figures (see bench/proctool.py) ----------------------------------------------------

# Debian's python3 without site packages starts in a fraction of the time a
# version-manager shim takes, and these run between measurements.
if [ -x /usr/bin/python3 ]; then PY=(/usr/bin/python3 -S); else PY=(python3); fi
proctool() { "${PY[@]}" "$BENCH_DIR/proctool.py" "$@"; }
proc_tree() { proctool tree "$@"; }
proc_cpu() { proctool cpu "$@"; }
proc_mem() { proctool mem "$@"; }

# pin_tree CPUS PID... : sets the CPU affinity of every thread of every
# process in the trees.
pin_tree() {
  local cpus="$1" p; shift
  for p in $(proc_tree "$@"); do taskset -a -p -c "$cpus" "$p" >/dev/null 2>&1 || true; done
}

# --- results -------------------------------------------------------------------------------
# $RESULTS holds one line per figure: metric <TAB> system <TAB> run <TAB> value,
# and "NA <TAB> system <TAB> reason" for a system that could not be measured.

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }
record_na() { printf 'NA\t%s\t-\t%s\n' "$1" "$2" >>"$RESULTS"; }

# kv FILE KEY : the value of KEY=value on the first line that has it.
kv() { grep -o -m1 "\b$2=[^ ]*" "$1" | head -n1 | cut -d= -f2; }

# calc EXPR : floating-point arithmetic.
calc() { awk "BEGIN { printf \"%.6g\\n\", $1 }"; }
