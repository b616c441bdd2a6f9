/*
 * The agent's config file on disk: bounded reads, parsing with every
 * warning logged, and the default path.
 */
#ifndef ATUN_AGENT_CFGFILE_H
#define ATUN_AGENT_CFGFILE_H

#include "config.h"

#define AGENT_CONFIG_DEFAULT "/etc/atun/agent.json"

/* Room for a message naming a path and a problem. */
#define AGENT_MSG_MAX (ATUN_CONFIG_PATH_MAX + ATUN_CONFIG_MSG_MAX + 64)

/* Reads the file |path| of at most |max| bytes into a malloc'd buffer with a
 * NUL after the |*len| bytes.  With |missing_ok| an absent file reads as
 * empty.  Returns 0 or what atun_fs_read() returns, or ATUN_ERR_NOMEM. */
int agent_file_read(const char *path, size_t max, int missing_ok, char **out,
                    size_t *len);

/* A text for an error of atun_fs_read() or atun_fs_write_atomic(), from
 * |errno| for ATUN_ERR_STORE: call it right after the failing call. */
const char *agent_file_error(int rv);

/* Reads and parses the agent config at |path| into |cfg|; its warnings go
 * to |err|.  On failure |msg| (AGENT_MSG_MAX bytes) says why, naming the
 * path.  Returns 0, a read error of agent_file_read() or a parse error of
 * atun_config_agent_parse(). */
int agent_config_read(atun_config_agent *cfg, const char *path, char *msg,
                      atun_config_error *err);

/* Loads the agent config at |path| into |cfg| and logs its warnings.  On
 * failure |msg| (AGENT_MSG_MAX bytes) says why, naming the path.  Returns
 * 0, a read error of agent_file_read() or a parse error of
 * atun_config_agent_parse(). */
int agent_config_load(atun_config_agent *cfg, const char *path, char *msg);

/* Logs the warnings of |err| for the file |path|. */
void agent_config_log_warnings(const atun_config_error *err, const char *path);

#endif /* ATUN_AGENT_CFGFILE_H */
