/*
 * tool_make_csrs: N agent identities at once for the load tests, so that
 * enrolling a few hundred agents does not take a few hundred processes.
 *
 *   tool_make_csrs DIR N PREFIX
 *
 * For i in 0..N-1: a P-256 key (DIR/<i>.key, PEM, mode 0600), a random
 * agent id and a CSR for the name PREFIX-<i> (DIR/<i>.csr, PEM).  Prints one
 * line per agent: "<id> <name> <key path> <csr path>".  The caller posts the
 * CSRs to POST /jet/agent-tunnel/enroll and stores the certificates.
 * Exit 0 on success, 1 with a message on stderr otherwise.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ca.h"

#define AGENTS_MAX 10000
#define PATH_LEN 4096

static int write_file(const char *path, const char *text, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return -1;
  ssize_t n = write(fd, text, len);
  int rv = close(fd);
  return n == (ssize_t)len && rv == 0 ? 0 : -1;
}

static int one(const char *dir, long i, const char *prefix) {
  uint8_t key[ATUN_CA_KEY_DER_MAX], csr[ATUN_CA_DER_MAX];
  char pem[ATUN_CA_PEM_MAX], id[ATUN_UUID_STRLEN], name[128];
  char kpath[PATH_LEN], cpath[PATH_LEN];
  size_t keylen, csrlen, pemlen;
  snprintf(name, sizeof(name), "%s-%ld", prefix, i);
  snprintf(kpath, sizeof(kpath), "%s/%ld.key", dir, i);
  snprintf(cpath, sizeof(cpath), "%s/%ld.csr", dir, i);
  int rv = atun_ca_key_generate(key, sizeof(key), &keylen);
  if (rv == 0) rv = atun_uuid_generate(id, atun_ca_sysrand());
  if (rv == 0) rv = atun_ca_csr_make(key, keylen, name, id, csr, sizeof(csr), &csrlen);
  if (rv == 0) rv = atun_pem_encode(ATUN_PEM_KEY, key, keylen, pem, sizeof(pem), &pemlen);
  if (rv == 0 && write_file(kpath, pem, pemlen) != 0) rv = ATUN_ERR_IO;
  if (rv == 0) rv = atun_pem_encode(ATUN_PEM_CSR, csr, csrlen, pem, sizeof(pem), &pemlen);
  if (rv == 0 && write_file(cpath, pem, pemlen) != 0) rv = ATUN_ERR_IO;
  if (rv != 0) {
    fprintf(stderr, "agent %ld: %s\n", i, atun_strerror(rv));
    return -1;
  }
  printf("%s %s %s %s\n", id, name, kpath, cpath);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s DIR N PREFIX\n", argv[0]);
    return 1;
  }
  long n = strtol(argv[2], NULL, 10);
  if (n <= 0 || n > AGENTS_MAX) {
    fprintf(stderr, "N must be 1..%d\n", AGENTS_MAX);
    return 1;
  }
  for (long i = 0; i < n; ++i)
    if (one(argv[1], i, argv[3]) != 0) return 1;
  return 0;
}
