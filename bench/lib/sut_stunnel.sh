# System "stunnel": TLS 1.3 with mutual authentication between a client
# stunnel and a server stunnel, with throw-away P-256 certificates from
# one CA made by openssl in $TMP/stunnel.  The suite is pinned to
# TLS_AES_128_GCM_SHA256, the same cipher as the ssh baseline.  A new TLS
# session per tunnelled connection (resumed from the client's cache), as
# stunnel does it.
#
# Ports: +30/+31 client listeners (iperf/echo), +32/+33 server listeners.
SUT_LABEL[stunnel]="stunnel TLS1.3 mTLS"

stunnel_cert() { # stunnel_cert DIR NAME EXTENSIONS
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$1/$2.key" -out "$1/$2.csr" -subj "/CN=bench-$2" 2>/dev/null
  openssl x509 -req -in "$1/$2.csr" -CA "$1/ca.crt" -CAkey "$1/ca.key" -set_serial "$RANDOM" \
    -days 2 -out "$1/$2.crt" -extfile <(printf '%s\n' "$3") 2>/dev/null
}

stunnel_conf() { # stunnel_conf DIR ROLE : writes DIR/ROLE.conf
  local d="$1" role="$2" svc accept connect
  {
    printf 'foreground = yes\npid =\nsyslog = no\ndebug = 3\n'
    for svc in iperf echo; do
      if [ "$role" = client ]; then
        accept=$((BASE + 30)); connect=$((BASE + 32))
      else
        accept=$((BASE + 32)); connect="$P_IPERF"
      fi
      if [ "$svc" = echo ]; then
        accept=$((accept + 1))
        if [ "$role" = client ]; then connect=$((connect + 1)); else connect="$P_ECHO"; fi
      fi
      printf '[%s]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n' "$svc" "$accept" "$connect"
      [ "$role" = client ] && printf 'client = yes\ncheckIP = 127.0.0.1\n'
      printf 'cert = %s/%s.crt\nkey = %s/%s.key\nCAfile = %s/ca.crt\n' "$d" "$role" "$d" "$role" "$d"
      printf 'verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n'
      printf 'ciphersuites = TLS_AES_128_GCM_SHA256\n'
    done
  } >"$d/$role.conf"
}

stunnel_files() { # stunnel_files DIR : CA, certificates and both configs
  mkdir -p "$1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$1/ca.key" -out "$1/ca.crt" -days 2 -subj /CN=bench-ca 2>/dev/null &&
    stunnel_cert "$1" server $'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth' &&
    stunnel_cert "$1" client $'extendedKeyUsage=clientAuth' || return 1
  stunnel_conf "$1" server
  stunnel_conf "$1" client
}

stunnel_start() {
  command -v stunnel4 >/dev/null || { NA_REASON="stunnel4 is not installed"; return 1; }
  local d="$TMP/stunnel" p
  if [ ! -f "$d/client.conf" ]; then
    stunnel_files "$d" || { NA_REASON="openssl could not make the certificates"; return 1; }
  fi
  bg_start stunnel-server stunnel4 "$d/server.conf"
  bg_start stunnel-client stunnel4 "$d/client.conf"
  for p in 32 33; do wait_tcp $((BASE + p)) stunnel-server; done
  for p in 30 31; do wait_tcp $((BASE + p)) stunnel-client; done
}

stunnel_stop() { bg_stop stunnel-client; bg_stop stunnel-server; }
stunnel_pids() { echo "${BG_PID[stunnel-server]} ${BG_PID[stunnel-client]}"; }
stunnel_iperf_port() { echo $((BASE + 30)); }
stunnel_echo_args() { echo "--connect 127.0.0.1:$((BASE + 31))"; }
