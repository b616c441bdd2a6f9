/*
 * The CA's intake of untrusted bytes: a CSR as DER and as PEM (what an
 * enrolling agent sends), and certificate reading (what a peer presents).
 * Each must return an error or a result that holds up: a CSR that passes
 * yields a valid P-256 public key; a certificate read yields a profile within
 * its bounds.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ca.h"

#define CHECK(cond) \
  do {              \
    if (!(cond)) abort(); \
  } while (0)

/* csr_verify already re-imported the key with an on-curve check; what the
 * CA needs next is a P-256 SPKI it can hash into a pin. */
static void check_spki(const uint8_t *spki, size_t len) {
  uint8_t pin[ATUN_SHA256_LEN];
  CHECK(len == 91);
  CHECK(atun_ca_spki_pin(spki, len, pin) == 0);
}

static void check_profile(const atun_cert_profile *p) {
  CHECK(p->nsans <= ATUN_CA_SAN_MAX);
  CHECK(p->serial_len <= ATUN_CA_SERIAL_MAX);
  CHECK(memchr(p->cn, '\0', sizeof(p->cn)) != NULL);
  for (size_t i = 0; i < p->nsans; ++i) {
    const atun_cert_san *san = &p->sans[i];
    CHECK(san->type == ATUN_SAN_DNS || san->type == ATUN_SAN_URI ||
          san->type == ATUN_SAN_IP);
    CHECK(memchr(san->name, '\0', sizeof(san->name)) != NULL);
  }
  char id[ATUN_UUID_STRLEN];
  if (atun_cert_profile_agent_id(p, id) == 0) {
    CHECK(atun_uuid_valid(id, strlen(id)));
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t spki[ATUN_CA_SPKI_DER_MAX];
  size_t n = 0;
  int rv = atun_ca_csr_verify(data, size, spki, sizeof(spki), &n);
  CHECK(rv <= 0);
  if (rv == 0) check_spki(spki, n);

  rv = atun_ca_csr_verify_pem((const char *)data, size, spki, sizeof(spki), &n);
  CHECK(rv <= 0);
  if (rv == 0) check_spki(spki, n);
  if (size > ATUN_CA_PEM_MAX) CHECK(rv == ATUN_ERR_FRAME_TOO_LARGE);

  atun_cert_profile p;
  rv = atun_ca_cert_read(data, size, &p);
  CHECK(rv <= 0);
  if (rv == 0) check_profile(&p);
  return 0;
}
