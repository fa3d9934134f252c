# Shared by scripts/bench-sql and scripts/instructions-per-statement: the
# pgbouncer both compare against (session pooling, `bench` → DB on the local
# PostgreSQL, any auth), so that both measure the same configuration.

# pgbouncer_ini DIR PORT DB: write DIR/pgbouncer.ini (log and pid file in DIR).
pgbouncer_ini() {
    cat > "$1/pgbouncer.ini" <<CONF
[databases]
bench = host=127.0.0.1 port=5432 dbname=$3 user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
auth_type = any
pool_mode = session
max_client_conn = 100
default_pool_size = 20
unix_socket_dir =
logfile = $1/pgbouncer.log
pidfile = $1/pgbouncer.pid
CONF
}
