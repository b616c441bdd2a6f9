# System "socat": a plain two-hop TCP relay without crypto, the shape of
# gateway + agent with nothing in between: client -> hop 1 -> hop 2 ->
# target, one socat per hop and target, forking a child per connection.
# TCP_NODELAY on both sides of each hop and 64 KiB copies make it as quick
# a relay as socat gets, so it is a hard latency baseline.
#
# Ports: +10/+11 hop 1 (iperf/echo), +12/+13 hop 2.
SUT_LABEL[socat]="socat 2-hop"

socat_relay() { # socat_relay NAME LISTEN_PORT TO_PORT
  bg_start "$1" socat -b 65536 \
    "TCP-LISTEN:$2,bind=127.0.0.1,reuseaddr,fork,nodelay,backlog=4096" \
    "TCP:127.0.0.1:$3,nodelay"
}

socat_start() {
  command -v socat >/dev/null || { NA_REASON="socat is not installed"; return 1; }
  socat_relay socat-h2-iperf $((BASE + 12)) "$P_IPERF"
  socat_relay socat-h2-echo $((BASE + 13)) "$P_ECHO"
  socat_relay socat-h1-iperf $((BASE + 10)) $((BASE + 12))
  socat_relay socat-h1-echo $((BASE + 11)) $((BASE + 13))
  local p
  for p in 10 11 12 13; do wait_tcp $((BASE + p)) socat-h1-iperf; done
}

socat_stop() {
  local n
  for n in socat-h1-iperf socat-h1-echo socat-h2-iperf socat-h2-echo; do bg_stop "$n"; done
}

socat_pids() {
  echo "${BG_PID[socat-h1-iperf]} ${BG_PID[socat-h1-echo]}" \
       "${BG_PID[socat-h2-iperf]} ${BG_PID[socat-h2-echo]}"
}
socat_iperf_port() { echo $((BASE + 10)); }
socat_echo_args() { echo "--connect 127.0.0.1:$((BASE + 11))"; }
