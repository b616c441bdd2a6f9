/*
 * The config file on disk (see cfgfile.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfgfile.h"
#include "fsutil.h"
#include "log.h"

int agent_file_read(const char *path, size_t max, int missing_ok, char **out,
                    size_t *len) {
  *out = NULL;
  *len = 0;
  char *buf = malloc(max + 1);
  if (buf == NULL) return ATUN_ERR_NOMEM;
  int rv = atun_fs_read(path, buf, max, len);
  if (rv == ATUN_ERR_NOT_FOUND && missing_ok) {
    *len = 0;
    rv = 0;
  }
  if (rv != 0) {
    int saved = errno; /* for agent_file_error() */
    free(buf);
    errno = saved;
    return rv;
  }
  buf[*len] = '\0';
  *out = buf;
  return 0;
}

const char *agent_file_error(int rv) {
  switch (rv) {
  case ATUN_ERR_NOT_FOUND: return "no such file or directory";
  case ATUN_ERR_DENIED: return "permission denied";
  case ATUN_ERR_LIMIT: return "file too large";
  case ATUN_ERR_INVALID_ARGUMENT: return "not a regular file";
  case ATUN_ERR_EXISTS: return "file exists";
  case ATUN_ERR_STORE: return strerror(errno);
  default: return atun_strerror(rv);
  }
}

void agent_config_log_warnings(const atun_config_error *err, const char *path) {
  for (size_t i = 0; i < err->warning_count; ++i)
    atun_log(ATUN_LOG_WARN, "agent", "config_warning", "path=%s warning=%s", path,
             err->warnings[i]);
  if (err->warnings_dropped > 0)
    atun_log(ATUN_LOG_WARN, "agent", "config_warning", "path=%s more=%zu", path,
             err->warnings_dropped);
}

int agent_config_read(atun_config_agent *cfg, const char *path, char *msg,
                      atun_config_error *err) {
  char *text;
  size_t len;
  memset(err, 0, sizeof(*err));
  int rv = agent_file_read(path, ATUN_CONFIG_TEXT_MAX, 0, &text, &len);
  if (rv != 0) {
    snprintf(msg, AGENT_MSG_MAX, "%s: %s", path, agent_file_error(rv));
    return rv;
  }
  rv = atun_config_agent_parse(cfg, text, len, NULL, err);
  free(text);
  if (rv != 0) snprintf(msg, AGENT_MSG_MAX, "%s: %s", path, err->message);
  return rv;
}

int agent_config_load(atun_config_agent *cfg, const char *path, char *msg) {
  atun_config_error err;
  int rv = agent_config_read(cfg, path, msg, &err);
  agent_config_log_warnings(&err, path);
  return rv;
}
