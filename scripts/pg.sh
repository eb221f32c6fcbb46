#!/usr/bin/env bash
# A private PostgreSQL server for the storage tests and benchmark: its own data directory and port,
# bound to 127.0.0.1, run as the `postgres` user (initdb and pg_ctl refuse root).
#
#   eval "$(scripts/pg.sh start)"   # initdb if needed, start, wait, print the exports below
#   scripts/pg.sh restart | stop | status
#
# Settings (environment): SBTC_PG_DIR (data dir, default /tmp/sbtc-hsm-signer-pg),
# SBTC_PG_PORT (default: the first port from 15432 that the server can bind, kept in the data dir so
# later calls agree; below the kernel's ephemeral range, where outgoing connections take ports),
# SBTC_PG_BIN (default: newest /usr/lib/postgresql/*/bin).
# Exports printed by `start`:
#   SBTC_TEST_PG_URL   superuser URL the tests use to create one fresh database per test
#   SBTC_TEST_PG_CTL   command prefix that runs pg_ctl on this server (the restart test stops/starts it)
set -euo pipefail

DIR="${SBTC_PG_DIR:-/tmp/sbtc-hsm-signer-pg}"
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -n "${SBTC_PG_PORT:-}" ]; then
  PORT="$SBTC_PG_PORT"
elif [ -f "$DIR/port" ]; then
  PORT="$(cat "$DIR/port")"
elif [ -f "$DIR/data/postgresql.conf" ] && grep -q '^port = ' "$DIR/data/postgresql.conf"; then
  PORT="$(sed -n 's/^port = //p' "$DIR/data/postgresql.conf" | tail -n 1)"
else
  # Another server (a second checkout's tests) may hold the usual port: take the next free one.
  PORT=15432
  while port_in_use "$PORT"; do PORT=$((PORT + 1)); done
fi
if [ -z "${SBTC_PG_BIN:-}" ]; then
  SBTC_PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
fi
BIN="$SBTC_PG_BIN"
if [ -z "$BIN" ] || [ ! -x "$BIN/pg_ctl" ]; then
  echo "pg.sh: no PostgreSQL server binaries found; install them with: apt-get install postgresql" >&2
  exit 1
fi

# Run a server binary as the postgres user when we are root; as ourselves otherwise.
if [ "$(id -u)" -eq 0 ]; then
  AS_PG=(runuser -u postgres --)
  AS_PG_TEXT="runuser -u postgres --"
else
  AS_PG=()
  AS_PG_TEXT=""
fi
PG_CTL=("${AS_PG[@]}" "$BIN/pg_ctl" -D "$DIR/data" -w -t 60)
LOG="$DIR/server.log"

init() {
  if [ -f "$DIR/data/PG_VERSION" ]; then return; fi
  mkdir -p "$DIR"
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$DIR"; fi
  chmod 700 "$DIR"
  echo "$PORT" > "$DIR/port"
  # Trust auth on 127.0.0.1 only: a throwaway test server, reachable from this machine alone.
  "${AS_PG[@]}" "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust --encoding=UTF8 --no-locale >"$DIR/initdb.log" 2>&1 \
    || { echo "pg.sh: initdb failed; see $DIR/initdb.log" >&2; exit 1; }
  cat >>"$DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
max_connections = 200
fsync = on
CONF
}

# One role must log in with a real password (scram-sha-256), so the tests can prove that
# password_file reaches the server; every other local connection is trusted.
ensure_password_rule() {
  local hba="$DIR/data/pg_hba.conf"
  if ! grep -q '^host all sbtc_password_test ' "$hba"; then
    { echo "host all sbtc_password_test 127.0.0.1/32 scram-sha-256"; cat "$hba"; } >"$hba.new"
    mv "$hba.new" "$hba"
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$hba"; fi
    chmod 600 "$hba"
    if "${PG_CTL[@]}" status >/dev/null 2>&1; then "${PG_CTL[@]}" reload >/dev/null; fi
  fi
}

start() {
  init
  ensure_password_rule
  if ! "${PG_CTL[@]}" status >/dev/null 2>&1; then
    local tries=0
    until "${PG_CTL[@]}" -l "$LOG" start >/dev/null 2>&1; do
      tries=$((tries + 1))
      # A port nobody listens on can still be taken (bound by another socket): unless the port
      # was given, move to the next one and try again.
      if [ -n "${SBTC_PG_PORT:-}" ] || [ "$tries" -ge 20 ] || ! grep -q "could not bind" "$LOG"; then
        echo "pg.sh: the server did not start; see $LOG" >&2
        exit 1
      fi
      PORT=$((PORT + 1))
      sed -i "s/^port = .*/port = $PORT/" "$DIR/data/postgresql.conf"
      echo "$PORT" > "$DIR/port"
    done
  fi
  for _ in $(seq 1 60); do
    if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then break; fi
    sleep 0.5
  done
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" || { echo "pg.sh: the server is not ready; see $LOG" >&2; exit 1; }
  echo "export SBTC_TEST_PG_URL=postgresql://postgres@127.0.0.1:$PORT/postgres"
  echo "export SBTC_TEST_PG_CTL=\"$AS_PG_TEXT $BIN/pg_ctl -D $DIR/data -w -t 60 -l $LOG\""
}

stop() {
  if [ -f "$DIR/data/PG_VERSION" ] && "${PG_CTL[@]}" status >/dev/null 2>&1; then
    "${PG_CTL[@]}" -m fast stop >/dev/null
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) "${PG_CTL[@]}" status ;;
  destroy) stop; rm -rf "$DIR" ;;
  *) echo "usage: $0 start|stop|restart|status|destroy" >&2; exit 2 ;;
esac
