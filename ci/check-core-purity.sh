#!/usr/bin/env bash
# Fails if the sans-I/O core reaches for a clock, a socket, a file or a
# global RNG.  It reads the undefined symbols of the compiled core library, so
# a call hidden behind a macro is caught too; the wolfSSL archive is not
# inspected (the core may call pure wolfCrypt functions such as SHA-256).
#
# usage: check-core-purity.sh path/to/libatun_core.a
set -euo pipefail
lib="${1:?usage: $0 libatun_core.a}"

forbidden='^(time|clock|clock_gettime|gettimeofday|timespec_get|ftime|times|
rand|rand_r|random|srand|srandom|drand48|erand48|lrand48|mrand48|arc4random|arc4random_buf|getrandom|getentropy|
socket|socketpair|connect|bind|listen|accept|accept4|send|sendto|sendmsg|sendmmsg|recv|recvfrom|recvmsg|recvmmsg|
getaddrinfo|gethostbyname|poll|select|epoll_wait|
open|open64|openat|creat|fopen|fopen64|freopen|fdopen|opendir|read|write|pread|pwrite|close|unlink|rename|stat|fstat|lstat|mkdir|
fread|fwrite|fprintf|printf|puts|fputs|perror|getenv|system|fork|exec[a-z]*|
sleep|usleep|nanosleep|malloc|calloc|realloc|free|wc_InitRng|wc_InitRng_ex|wc_GenerateSeed)$'
forbidden="$(printf '%s' "$forbidden" | tr -d '\n')"

# "archive:object:   U symbol@VERSION" -> "object symbol".  mem.o holds the
# default allocator, the one place where the C library's malloc family is used.
pairs="$(nm -u -A "$lib" 2>/dev/null | sed -E 's/^[^:]*:([^:]*):[[:space:]]+U[[:space:]]+([^@[:space:]]+).*/\1 \2/')"
bad="$(printf '%s\n' "$pairs" | awk -v re="$forbidden" '
  $2 ~ re && !($1 == "mem.c.o" && $2 ~ /^(malloc|calloc|realloc|free)$/) {print "  " $2 " in " $1}' | sort -u)"
if [ -n "$bad" ]; then
  echo "core purity: forbidden calls in $lib:" >&2
  printf '%s\n' "$bad" >&2
  exit 1
fi
echo "core purity: ok ($(printf '%s\n' "$pairs" | awk '{print $2}' | sort -u | wc -l) external symbols checked)"
