/*
 * HTTPS POST to the gateway's API, trusted through a CA pin (see
 * enroll_http.h).
 *
 * Why two TLS handshakes.  The agent holds only the SHA-256 of the CA's
 * SubjectPublicKeyInfo, not the CA certificate.  wolfSSL checks a chain
 * against trust anchors loaded before the handshake, and offers no way to
 * make a certificate met during the handshake an anchor.  So:
 *
 *  1. Discovery.  A handshake whose verify callback accepts every
 *     certificate and keeps only the bytes of the first one in the
 *     presented chain whose key hashes to the pin.  Nothing is sent on this
 *     connection and nothing else from it is used; it is closed.  Those
 *     bytes are trustworthy for exactly one thing: they carry the pinned
 *     public key, so any signature that verifies with them was made by the
 *     CA.  Their other fields (validity, extensions) may have been forged
 *     by whoever answered; they can only make the anchor less useful.
 *
 *  2. Exchange.  A fresh context whose only trust anchor is that
 *     certificate, with peer verification on.  wolfSSL now checks that the
 *     server's certificate chains to the pinned key, that it is valid
 *     today, and (CertificateVerify) that the server holds its private key.
 *     The verify callback adds what a chain check cannot know: the
 *     certificate must be a gateway server certificate (EKU serverAuth)
 *     naming the URL's host.  The same CA issues clientAuth certificates to
 *     every agent; without this check any enrolled agent could pose as the
 *     API and collect the secrets of agents enrolling after it.
 *
 * Only after the second handshake passed does the bearer secret leave the
 * process.  A man in the middle can make enrollment fail, never succeed.
 */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/error-ssl.h>

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ca.h"
#include "enroll_http.h"
#include "http_resp.h"
#include "pin.h"
#include "version.h"

/* Bytes read from TLS at a time. */
#define READ_CHUNK 4096

typedef struct xfer {
  const agent_https_request *req;
  agent_https_response *resp;
  atun_tstamp deadline; /* CLOCK_MONOTONIC ns */
  int fd;
  WOLFSSL_CTX *ctx;
  WOLFSSL *ssl;
  char host[ATUN_NAME_MAX + 1]; /* for getaddrinfo, SNI and messages */
  /* Discovery: the pinned certificate as the server sent it. */
  uint8_t anchor[ATUN_CA_DER_MAX];
  size_t anchor_len;
  /* Exchange: what the verify callback found. */
  int verify_failed;
  int verify_error;     /* wolfSSL's code for a chain that did not verify */
  const char *leaf_why; /* the server certificate's policy failure */
  int leaf_ok;
} xfer;

static int failf(xfer *x, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int failf(xfer *x, int err, const char *fmt, ...) {
  if (x->resp->error[0] == '\0') {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->resp->error, sizeof(x->resp->error), fmt, ap);
    va_end(ap);
  }
  return err;
}

static atun_tstamp now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (atun_tstamp)t.tv_sec * ATUN_NS_PER_S + (atun_tstamp)t.tv_nsec;
}

/* Waits until |fd| is ready for |events| or the deadline passes. */
static int wait_fd(int fd, short events, atun_tstamp deadline) {
  for (;;) {
    atun_tstamp now = now_ns();
    if (now >= deadline) return ATUN_ERR_TIMEOUT;
    uint64_t ms = (deadline - now + ATUN_NS_PER_MS - 1) / ATUN_NS_PER_MS;
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, ms > 60000 ? 60000 : (int)ms);
    if (n > 0) return 0; /* ready, or an error the next call reports */
    if (n < 0 && errno != EINTR) return ATUN_ERR_CLOSED;
  }
}

/* --- TCP ------------------------------------------------------------------- */

static int try_connect(xfer *x, const struct addrinfo *ai, int *perrno) {
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  ai->ai_protocol);
  if (fd < 0) {
    *perrno = errno;
    return ATUN_ERR_CLOSED;
  }
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
    if (errno != EINPROGRESS) {
      *perrno = errno;
      close(fd);
      return ATUN_ERR_CLOSED;
    }
    int rv = wait_fd(fd, POLLOUT, x->deadline);
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (rv == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
      soerr = errno;
    if (rv != 0 || soerr != 0) {
      *perrno = soerr;
      close(fd);
      return rv != 0 ? rv : ATUN_ERR_CLOSED;
    }
  }
  x->fd = fd;
  return 0;
}

/* getaddrinfo blocks without a deadline of its own; enrollment is a
 * one-shot command, and a stuck resolver is the operator's to see. */
static int tcp_connect(xfer *x) {
  const atun_enroll_url *u = x->req->url;
  char port[8];
  snprintf(port, sizeof(port), "%u", (unsigned)u->port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  hints.ai_flags = AI_NUMERICSERV |
                   (u->host.kind == ATUN_TARGET_ADDR ? AI_NUMERICHOST : 0);
  struct addrinfo *res = NULL;
  int gai = getaddrinfo(x->host, port, &hints, &res);
  if (gai != 0)
    return failf(x, ATUN_ERR_NOT_FOUND, "cannot resolve %s: %s", x->host,
                 gai_strerror(gai));
  int rv = ATUN_ERR_CLOSED, last = 0;
  for (const struct addrinfo *ai = res; ai != NULL && x->fd < 0; ai = ai->ai_next) {
    rv = try_connect(x, ai, &last);
    if (rv == ATUN_ERR_TIMEOUT) break;
  }
  freeaddrinfo(res);
  if (x->fd >= 0) return 0;
  if (rv == ATUN_ERR_TIMEOUT)
    return failf(x, rv, "connecting to %s port %s timed out", x->host, port);
  return failf(x, ATUN_ERR_CLOSED, "cannot connect to %s port %s: %s", x->host,
               port, strerror(last));
}

/* --- TLS ------------------------------------------------------------------- */

static xfer *xfer_of_store(WOLFSSL_X509_STORE_CTX *store) {
  WOLFSSL *ssl = wolfSSL_X509_STORE_CTX_get_ex_data(
      store, wolfSSL_get_ex_data_X509_STORE_CTX_idx());
  return ssl != NULL ? wolfSSL_get_app_data(ssl) : NULL;
}

static const uint8_t *current_der(WOLFSSL_X509_STORE_CTX *store, size_t *len) {
  int n = 0;
  const unsigned char *der =
      wolfSSL_X509_get_der(wolfSSL_X509_STORE_CTX_get_current_cert(store), &n);
  *len = der != NULL && n > 0 ? (size_t)n : 0;
  return *len > 0 ? der : NULL;
}

/* Discovery: runs once per presented certificate (wolfSSL is built with
 * WOLFSSL_ALWAYS_VERIFY_CB and WOLFSSL_VERIFY_CB_ALL_CERTS).  Accepting all
 * of them is what lets the handshake reach the end; see the top. */
static int discover_cb(int preverify, WOLFSSL_X509_STORE_CTX *store) {
  (void)preverify;
  xfer *x = xfer_of_store(store);
  if (x == NULL) return 0;
  agent_der d;
  d.der = current_der(store, &d.len);
  if (x->anchor_len == 0 && d.der != NULL && d.len <= sizeof(x->anchor) &&
      agent_pin_find(&d, 1, x->req->ca_pin) == 0) {
    memcpy(x->anchor, d.der, d.len);
    x->anchor_len = d.len;
  }
  return 1;
}

/* Exchange: the chain must verify, and the leaf must be the API's. */
static int check_cb(int preverify, WOLFSSL_X509_STORE_CTX *store) {
  xfer *x = xfer_of_store(store);
  if (x == NULL) return 0;
  if (!preverify) {
    if (!x->verify_failed) x->verify_error = wolfSSL_X509_STORE_CTX_get_error(store);
    x->verify_failed = 1;
    return 0;
  }
  if (wolfSSL_X509_STORE_CTX_get_error_depth(store) != 0) return 1;
  size_t len;
  const uint8_t *der = current_der(store, &len);
  if (der == NULL ||
      agent_pin_check_server(der, len, &x->req->url->host, &x->leaf_why) != 0) {
    if (x->leaf_why == NULL) x->leaf_why = "the server certificate can not be read";
    x->verify_failed = 1;
    return 0;
  }
  x->leaf_ok = 1;
  return 1;
}

static int ctx_new(xfer *x, VerifyCallback cb) {
  x->ctx = wolfSSL_CTX_new(wolfTLS_client_method());
  if (x->ctx == NULL) return failf(x, ATUN_ERR_NOMEM, "out of memory");
  if (wolfSSL_CTX_SetMinVersion(x->ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS)
    return failf(x, ATUN_ERR_INTERNAL, "TLS setup failed");
  wolfSSL_CTX_set_verify(x->ctx, WOLFSSL_VERIFY_PEER, cb);
  return 0;
}

static void tls_close(xfer *x) {
  if (x->ssl != NULL) {
    /* One close_notify, not waited for: the server needs no goodbye. */
    wolfSSL_shutdown(x->ssl);
    wolfSSL_free(x->ssl);
    x->ssl = NULL;
  }
  if (x->fd >= 0) close(x->fd);
  x->fd = -1;
  wolfSSL_CTX_free(x->ctx);
  x->ctx = NULL;
}

/* After a wolfSSL call returned |ret| <= 0: waits if it wants I/O (0: call
 * again), else stores wolfSSL's error in |*pwolf| and returns
 * ATUN_ERR_PROTO. */
static int tls_wait(xfer *x, int ret, int *pwolf) {
  int e = wolfSSL_get_error(x->ssl, ret);
  if (e == WOLFSSL_ERROR_WANT_READ) return wait_fd(x->fd, POLLIN, x->deadline);
  if (e == WOLFSSL_ERROR_WANT_WRITE) return wait_fd(x->fd, POLLOUT, x->deadline);
  *pwolf = e;
  return ATUN_ERR_PROTO;
}

static void wolf_text(int code, char *buf, size_t len) {
  wolfSSL_ERR_error_string_n((unsigned long)code, buf, len);
}

static int handshake_failed(xfer *x, int rv, int wolf) {
  if (rv == ATUN_ERR_TIMEOUT)
    return failf(x, rv, "TLS handshake with %s timed out", x->host);
  char why[96];
  if (x->verify_failed && x->leaf_why != NULL)
    return failf(x, ATUN_ERR_DENIED, "refusing the gateway: %s", x->leaf_why);
  if (x->verify_failed) {
    wolf_text(x->verify_error, why, sizeof(why));
    return failf(x, ATUN_ERR_DENIED,
                 "refusing the gateway: its certificate does not verify "
                 "against the pinned CA (%s)", why);
  }
  wolf_text(wolf, why, sizeof(why));
  return failf(x, ATUN_ERR_PROTO, "TLS handshake with %s failed: %s", x->host, why);
}

static int tls_handshake(xfer *x) {
  int rv = tcp_connect(x);
  if (rv != 0) return rv;
  x->ssl = wolfSSL_new(x->ctx);
  if (x->ssl == NULL) return failf(x, ATUN_ERR_NOMEM, "out of memory");
  wolfSSL_set_app_data(x->ssl, x);
  if (wolfSSL_set_fd(x->ssl, x->fd) != WOLFSSL_SUCCESS)
    return failf(x, ATUN_ERR_INTERNAL, "TLS setup failed");
  if (x->req->url->host.kind == ATUN_TARGET_HOST &&
      wolfSSL_UseSNI(x->ssl, WOLFSSL_SNI_HOST_NAME, x->host,
                     (unsigned short)strlen(x->host)) != WOLFSSL_SUCCESS)
    return failf(x, ATUN_ERR_INTERNAL, "TLS setup failed");
  int wolf = 0;
  for (;;) {
    int ret = wolfSSL_connect(x->ssl);
    if (ret == WOLFSSL_SUCCESS) return 0;
    rv = tls_wait(x, ret, &wolf);
    if (rv != 0) return handshake_failed(x, rv, wolf);
  }
}

static int discover(xfer *x) {
  int rv = ctx_new(x, discover_cb);
  if (rv == 0) rv = tls_handshake(x);
  tls_close(x);
  if (rv != 0) return rv;
  if (x->anchor_len == 0)
    return failf(x, ATUN_ERR_DENIED,
                 "refusing the gateway: no certificate in its chain has the CA "
                 "key pinned in the enrollment string");
  return 0;
}

static int exchange_open(xfer *x) {
  int rv = ctx_new(x, check_cb);
  if (rv != 0) return rv;
  if (wolfSSL_CTX_load_verify_buffer(x->ctx, x->anchor, (long)x->anchor_len,
                                     WOLFSSL_FILETYPE_ASN1) != WOLFSSL_SUCCESS)
    return failf(x, ATUN_ERR_DENIED,
                 "refusing the gateway: the certificate with the pinned key is "
                 "not a CA certificate");
  rv = tls_handshake(x);
  if (rv == 0 && !x->leaf_ok)
    return failf(x, ATUN_ERR_DENIED, "refusing the gateway: its certificate was "
                                     "not checked");
  return rv;
}

/* --- HTTP ------------------------------------------------------------------ */

static char *request_text(const agent_https_request *req, size_t *plen) {
  char hostport[ATUN_HOSTPORT_STRLEN];
  atun_hostport_format(hostport, &req->url->host, req->url->port);
  static const char fmt[] =
      "POST %s%s HTTP/1.1\r\n"
      "Host: %s\r\n"
      "Authorization: Bearer %s\r\n"
      "Content-Type: application/json\r\n"
      "Accept: application/json\r\n"
      "User-Agent: " AGENT_SOFTWARE "\r\n"
      "Content-Length: %zu\r\n"
      "Connection: close\r\n"
      "\r\n";
  int head = snprintf(NULL, 0, fmt, req->url->path, req->path, hostport,
                      req->bearer, req->body_len);
  if (head < 0) return NULL;
  char *buf = malloc((size_t)head + req->body_len + 1);
  if (buf == NULL) return NULL;
  snprintf(buf, (size_t)head + 1, fmt, req->url->path, req->path, hostport,
           req->bearer, req->body_len);
  memcpy(buf + head, req->body, req->body_len);
  *plen = (size_t)head + req->body_len;
  buf[*plen] = '\0';
  return buf;
}

static int send_all(xfer *x, const char *buf, size_t len) {
  size_t off = 0;
  while (off < len) {
    size_t want = len - off > 16384 ? 16384 : len - off;
    int n = wolfSSL_write(x->ssl, buf + off, (int)want);
    if (n > 0) {
      off += (size_t)n;
      continue;
    }
    int wolf = 0, rv = tls_wait(x, n, &wolf);
    if (rv == ATUN_ERR_TIMEOUT) return failf(x, rv, "sending the request timed out");
    if (rv != 0) return failf(x, ATUN_ERR_CLOSED, "the gateway closed the connection");
  }
  return 0;
}

static int reader_failed(xfer *x, const agent_http_reader *r, int rv) {
  if (rv == ATUN_ERR_TRUNCATED)
    return failf(x, rv, "the gateway closed the connection before answering");
  return failf(x, rv, "unusable HTTP response: %s", r->why ? r->why : "error");
}

static int receive(xfer *x, agent_http_reader *r) {
  char buf[READ_CHUNK];
  for (;;) {
    int n = wolfSSL_read(x->ssl, buf, sizeof(buf));
    if (n > 0) {
      int rv = agent_http_reader_feed(r, buf, (size_t)n);
      if (rv == 1) return 0;
      if (rv < 0) return reader_failed(x, r, rv);
      continue;
    }
    int e = wolfSSL_get_error(x->ssl, n);
    if (e == WOLFSSL_ERROR_ZERO_RETURN || e == SOCKET_PEER_CLOSED_E ||
        e == SOCKET_ERROR_E) {
      int rv = agent_http_reader_eof(r);
      return rv == 1 ? 0 : reader_failed(x, r, rv);
    }
    int wolf = 0, rv = tls_wait(x, n, &wolf);
    if (rv == ATUN_ERR_TIMEOUT) return failf(x, rv, "waiting for the answer timed out");
    if (rv != 0) {
      char why[96];
      wolf_text(wolf, why, sizeof(why));
      return failf(x, ATUN_ERR_PROTO, "reading the answer failed: %s", why);
    }
  }
}

static int exchange(xfer *x) {
  agent_http_reader r;
  int rv = agent_http_reader_init(&r, x->req->response_max, atun_mem_default());
  if (rv != 0) return failf(x, rv, "bad response bound");
  rv = exchange_open(x);
  size_t len = 0;
  char *text = rv == 0 ? request_text(x->req, &len) : NULL;
  if (rv == 0 && text == NULL) rv = failf(x, ATUN_ERR_NOMEM, "out of memory");
  if (rv == 0) rv = send_all(x, text, len);
  if (text != NULL) {
    explicit_bzero(text, len); /* it holds the secret */
    free(text);
  }
  if (rv == 0) rv = receive(x, &r);
  tls_close(x);
  if (rv == 0) {
    x->resp->status = r.status;
    x->resp->body = r.body != NULL ? r.body : atun_mem_calloc(atun_mem_default(), 1, 1);
    x->resp->body_len = r.body_len;
    r.body = NULL;
    if (x->resp->body == NULL) rv = failf(x, ATUN_ERR_NOMEM, "out of memory");
  }
  agent_http_reader_free(&r);
  return rv;
}

static int request_ok(const agent_https_request *req) {
  return req->url != NULL && req->ca_pin != NULL && req->path != NULL &&
         req->path[0] == '/' && req->bearer != NULL &&
         strpbrk(req->bearer, "\r\n") == NULL && req->body != NULL &&
         req->body_len <= AGENT_HTTPS_BODY_MAX && req->timeout_ns > 0 &&
         req->timeout_ns <= 3600 * ATUN_NS_PER_S && req->response_max > 0 &&
         req->response_max <= AGENT_HTTP_BODY_LIMIT;
}

int agent_https_post(const agent_https_request *req,
                     agent_https_response *resp) {
  memset(resp, 0, sizeof(*resp));
  if (!request_ok(req)) {
    snprintf(resp->error, sizeof(resp->error), "invalid request");
    return ATUN_ERR_INVALID_ARGUMENT;
  }
  xfer *x = calloc(1, sizeof(*x));
  if (x == NULL) {
    snprintf(resp->error, sizeof(resp->error), "out of memory");
    return ATUN_ERR_NOMEM;
  }
  x->req = req;
  x->resp = resp;
  x->fd = -1;
  x->deadline = now_ns() + req->timeout_ns;
  if (req->url->host.kind == ATUN_TARGET_ADDR)
    atun_addr_format(x->host, &req->url->host.addr);
  else
    snprintf(x->host, sizeof(x->host), "%s", req->url->host.host);
  int rv;
  if (wolfSSL_Init() != WOLFSSL_SUCCESS) {
    rv = failf(x, ATUN_ERR_INTERNAL, "TLS library setup failed");
  } else {
    rv = discover(x);
    if (rv == 0) rv = exchange(x);
    wolfSSL_Cleanup();
  }
  free(x);
  return rv;
}

void agent_https_response_free(agent_https_response *resp) {
  atun_mem_free(atun_mem_default(), resp->body);
  resp->body = NULL;
  resp->body_len = 0;
}
