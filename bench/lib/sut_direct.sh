# System "direct": the client talks to the targets with no tunnel, the
# ceiling every other system is held against.  No tunnel processes, so it
# has no CPU or memory figures.
SUT_LABEL[direct]="direct TCP"

direct_start() { :; }
direct_stop() { :; }
direct_pids() { :; }
direct_iperf_port() { echo "$P_IPERF"; }
direct_echo_args() { echo "--connect 127.0.0.1:$P_ECHO"; }
