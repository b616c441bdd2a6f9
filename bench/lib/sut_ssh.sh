# System "ssh": `ssh -L` with AES-128-GCM to an OpenSSH server on loopback.
# The server runs as root from a throw-away config, host key and user key
# in $TMP/ssh; the client forwards two local ports (iperf, echo) over one
# SSH connection, as an operator would.
#
# Ports: +20/+21 the -L listeners, +25 sshd.
SUT_LABEL[ssh]="ssh -L aes128-gcm"

ssh_start() {
  [ "$(id -u)" = 0 ] || { NA_REASON="sshd needs root (run bench/run.sh as root)"; return 1; }
  [ -x /usr/sbin/sshd ] || { NA_REASON="/usr/sbin/sshd missing (Debian openssh-server)"; return 1; }
  local d="$TMP/ssh"
  mkdir -p "$d" /run/sshd
  chmod 0755 /run/sshd
  if [ ! -f "$d/user_key" ]; then
    ssh-keygen -q -t ed25519 -N '' -f "$d/host_key" -C bench-host
    ssh-keygen -q -t ed25519 -N '' -f "$d/user_key" -C bench-user
    cp "$d/user_key.pub" "$d/authorized_keys"
  fi
  cat >"$d/sshd_config" <<CFG
Port $((BASE + 25))
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile none
PermitRootLogin prohibit-password
AuthorizedKeysFile $d/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
AllowTcpForwarding yes
Ciphers aes128-gcm@openssh.com
LogLevel ERROR
CFG
  bg_start sshd /usr/sbin/sshd -f "$d/sshd_config" -D -e
  wait_tcp $((BASE + 25)) sshd
  bg_start ssh ssh -F /dev/null -N -T -p $((BASE + 25)) -i "$d/user_key" \
    -c aes128-gcm@openssh.com -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o ExitOnForwardFailure=yes -o LogLevel=ERROR \
    -L "127.0.0.1:$((BASE + 20)):127.0.0.1:$P_IPERF" \
    -L "127.0.0.1:$((BASE + 21)):127.0.0.1:$P_ECHO" root@127.0.0.1
  wait_tcp $((BASE + 20)) ssh
  wait_tcp $((BASE + 21)) ssh
}

ssh_stop() { bg_stop ssh; bg_stop sshd; }
ssh_pids() { echo "${BG_PID[sshd]} ${BG_PID[ssh]}"; }
ssh_iperf_port() { echo $((BASE + 20)); }
ssh_echo_args() { echo "--connect 127.0.0.1:$((BASE + 21))"; }
