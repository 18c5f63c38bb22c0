#!/bin/bash
# What is left after a SIGKILL of warden and its guard together (as one event: warden is stopped
# first, so that it cannot act on its guard's death): 10 workers, each with a grandchild that
# setsid's and double-forks, with pid_namespace off and on (cgroup mode, as root). Processes are
# counted 1 s after the kill by their unusual argv (sleep 7770 / 7771).
#
# Usage (as root): bash benches/left_after_kill.sh target/release/warden
set -u
bin=${1:?usage: left_after_kill.sh WARDEN_BINARY}
count() { pgrep -f -c 'sleep 777[01]$' || true; }
for mode in false true; do
  d=$(mktemp -d /tmp/warden-left.XXXX)
  cat > "$d/w.sh" <<'W'
#!/bin/sh
setsid sh -c 'sh -c "trap \"\" TERM; exec sleep 7771" & exit 0'
exec sleep 7770
W
  cat > "$d/w.toml" <<T
[daemon]
pidfile = "$d/w.pid"
control_socket = "$d/w.sock"
log = "$d/w.log"
pid_namespace = $mode
[program.w]
command = ["/bin/sh", "$d/w.sh"]
instances = 10
T
  "$bin" -c "$d/w.toml" start >/dev/null 2>&1
  w=$(cat "$d/w.pid")
  for _ in $(seq 100); do [ "$(count)" -ge 20 ] && break; sleep 0.05; done
  before=$(count)
  guard=""
  for c in $(pgrep -P "$w"); do
    tr '\0' ' ' < /proc/"$c"/cmdline | grep -q '^warden-guard' && guard=$c
  done
  kill -STOP "$w"
  kill -9 "$guard" "$w"
  sleep 1
  echo "pid_namespace = $mode: $before processes (10 workers, 10 setsid'd grandchildren);" \
    "left 1 s after SIGKILL of warden and its guard: $(count)"
  pkill -9 -f 'sleep 777[01]$'
  rm -rf "$d"
done
