/*
 * tool_expired_cert: re-signs an enrolled agent's certificate with the
 * gateway's CA so that its validity ended in the past, for the refusal tests.
 * Everything but the validity (name, URI SAN, key, usages) stays as issued,
 * so the one thing the gateway can object to is the expiry.
 *
 *   tool_expired_cert CA_CRT CA_KEY AGENT_CRT AGENT_KEY OUT_CRT
 *
 * All files PEM.  The new certificate was valid from two days ago until one
 * hour ago.  Exit 0 on success, 1 with a message on stderr otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ca.h"

#define FILE_MAX ATUN_CA_PEM_MAX

static int slurp(const char *path, char *buf, size_t cap, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return -1;
  *len = fread(buf, 1, cap, f);
  int bad = ferror(f) || *len == cap;
  fclose(f);
  return bad ? -1 : 0;
}

static int load_der(const char *path, atun_pem_type type, uint8_t *der, size_t cap,
                    size_t *derlen) {
  static char pem[FILE_MAX];
  size_t len;
  if (slurp(path, pem, sizeof(pem), &len) != 0) {
    fprintf(stderr, "cannot read %s\n", path);
    return -1;
  }
  int rv = atun_pem_decode(type, pem, len, der, cap, derlen);
  if (rv != 0) fprintf(stderr, "%s: %s\n", path, atun_strerror(rv));
  return rv == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  static uint8_t ca_crt[ATUN_CA_DER_MAX], agent_crt[ATUN_CA_DER_MAX], out[ATUN_CA_DER_MAX];
  static char pem[FILE_MAX];
  uint8_t ca_key[ATUN_CA_KEY_DER_MAX], agent_key[ATUN_CA_KEY_DER_MAX];
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t ca_crt_len, ca_key_len, agent_crt_len, agent_key_len, spki_len, out_len, pem_len;
  if (argc != 6) {
    fprintf(stderr, "usage: %s CA_CRT CA_KEY AGENT_CRT AGENT_KEY OUT_CRT\n", argv[0]);
    return 1;
  }
  if (load_der(argv[1], ATUN_PEM_CERT, ca_crt, sizeof(ca_crt), &ca_crt_len) != 0 ||
      load_der(argv[2], ATUN_PEM_KEY, ca_key, sizeof(ca_key), &ca_key_len) != 0 ||
      load_der(argv[3], ATUN_PEM_CERT, agent_crt, sizeof(agent_crt), &agent_crt_len) != 0 ||
      load_der(argv[4], ATUN_PEM_KEY, agent_key, sizeof(agent_key), &agent_key_len) != 0)
    return 1;
  atun_cert_profile p;
  int rv = atun_ca_cert_read(agent_crt, agent_crt_len, &p);
  if (rv == 0) rv = atun_ca_key_spki(agent_key, agent_key_len, spki, sizeof(spki), &spki_len);
  if (rv != 0) {
    fprintf(stderr, "agent material: %s\n", atun_strerror(rv));
    return 1;
  }
  atun_tstamp now_s = (atun_tstamp)time(NULL);
  p.not_before = (now_s - 2 * 86400) * ATUN_NS_PER_S;
  p.not_after = (now_s - 3600) * ATUN_NS_PER_S;
  atun_ca_issuer issuer = {ca_crt, ca_crt_len, ca_key, ca_key_len};
  rv = atun_ca_issue(&p, spki, spki_len, &issuer, out, sizeof(out), &out_len);
  if (rv == 0) rv = atun_pem_encode(ATUN_PEM_CERT, out, out_len, pem, sizeof(pem), &pem_len);
  if (rv != 0) {
    fprintf(stderr, "issue: %s\n", atun_strerror(rv));
    return 1;
  }
  FILE *f = fopen(argv[5], "wb");
  if (f == NULL || fwrite(pem, 1, pem_len, f) != pem_len || fclose(f) != 0) {
    fprintf(stderr, "cannot write %s\n", argv[5]);
    return 1;
  }
  return 0;
}
