/* The agent's version, printed by --version and sent in Hello. */
#ifndef ATUN_AGENT_VERSION_H
#define ATUN_AGENT_VERSION_H

#define AGENT_VERSION "0.1.0"
#define AGENT_SOFTWARE "atun-agent " AGENT_VERSION

#endif /* ATUN_AGENT_VERSION_H */
