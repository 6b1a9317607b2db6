# Source this: pg_start DIR PORT starts a throwaway PostgreSQL 15 (trust auth, fsync off)
# owned by the postgres OS user; pg_stop DIR stops it. Used by the demo and benchmarks.
PG_BIN=/usr/lib/postgresql/15/bin
pg_start() {
  local dir=$1 port=$2
  mkdir -p "$dir"; chown postgres: "$dir"; chmod 700 "$dir"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust \
    -E UTF8 --locale=C.UTF-8 >/dev/null
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
}
pg_stop() {
  local dir=$1
  [ -d "$dir/data" ] && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
}
pg_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
