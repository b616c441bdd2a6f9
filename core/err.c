#include "atun.h"

const char *atun_strerror(int code) {
  switch ((atun_error)code) {
  case ATUN_OK: return "success";
  case ATUN_ERR_INVALID_ARGUMENT: return "invalid argument";
  case ATUN_ERR_NOBUF: return "output buffer too small";
  case ATUN_ERR_TRUNCATED: return "input truncated";
  case ATUN_ERR_MALFORMED: return "malformed encoding";
  case ATUN_ERR_FRAME_TOO_LARGE: return "frame too large";
  case ATUN_ERR_UNKNOWN_TYPE: return "unknown frame type";
  case ATUN_ERR_LIMIT: return "count over limit";
  case ATUN_ERR_BAD_PREFIX: return "bad prefix length";
  case ATUN_ERR_BAD_NAME: return "bad name";
  case ATUN_ERR_MISSING_FIELD: return "missing required field";
  case ATUN_ERR_TRAILING: return "trailing bytes";
  case ATUN_ERR_VERSION: return "no common protocol version";
  case ATUN_ERR_NOT_FOUND: return "not found";
  case ATUN_ERR_EXISTS: return "already exists";
  case ATUN_ERR_FULL: return "limit reached";
  case ATUN_ERR_EXPIRED: return "expired";
  case ATUN_ERR_USED: return "already used";
  case ATUN_ERR_STALE: return "stale generation or epoch";
  case ATUN_ERR_REVOKED: return "revoked";
  case ATUN_ERR_STATE: return "invalid state";
  case ATUN_ERR_PROTO: return "protocol violation";
  case ATUN_ERR_DENIED: return "denied";
  case ATUN_ERR_TIMEOUT: return "timed out";
  case ATUN_ERR_CLOSED: return "closed";
  case ATUN_ERR_WOULDBLOCK: return "would block";
  case ATUN_ERR_STORE: return "store failure";
  case ATUN_ERR_IO: return "I/O error";
  case ATUN_ERR_FATAL: return "fatal error";
  case ATUN_ERR_NOMEM: return "out of memory";
  case ATUN_ERR_CALLBACK_FAILURE: return "callback failure";
  case ATUN_ERR_INTERNAL: return "internal error";
  }
  return "unknown error";
}

int atun_err_is_fatal(int code) { return code <= ATUN_ERR_FATAL; }
