#!/bin/sh
# The lab containers' entrypoint (PID 2, under tini).
#   primary    a cluster in $PGDATA made on first start (the postgres and repl roles get
#              $MIGRATE_LAB_PASSWORD), started, then the container just stays up
#   standby    an empty $PGDATA: migrate clones into it over `docker exec`
#   pgbouncer  PgBouncer in front of $MIGRATE_PRIMARY_HOST, as the postgres user
# The container outlives its server: migrate stops and starts servers with pg_ctl, as on a host.
set -eu
: "${MIGRATE_LAB_PASSWORD:?set MIGRATE_LAB_PASSWORD}"
log=/var/lib/postgresql/migrate/server.log

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

case "${1:-standby}" in
primary)
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        install -d -o postgres -g postgres -m 0700 "$PGDATA"
        pw=$(mktemp)
        printf '%s\n' "$MIGRATE_LAB_PASSWORD" > "$pw"
        chown postgres "$pw"
        as_postgres initdb -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 --pwfile="$pw" >/dev/null
        rm -f "$pw"
        cat /usr/local/share/migrate-lab/lab.conf >> "$PGDATA/postgresql.conf"
        printf "cluster_name = 'old'\n" >> "$PGDATA/postgresql.conf"
        cat > "$PGDATA/pg_hba.conf" <<HBA
# migrate compose lab: socket for the local superuser, passwords over the network
local   all          all                   trust
host    all          all    all            scram-sha-256
host    replication  all    all            scram-sha-256
HBA
        as_postgres pg_ctl -D "$PGDATA" -l "$log" -w start >/dev/null
        as_postgres psql -qX -v ON_ERROR_STOP=1 -v pw="$MIGRATE_LAB_PASSWORD" -d postgres <<'SQL'
CREATE ROLE repl WITH REPLICATION LOGIN;
ALTER ROLE repl PASSWORD :'pw';
SQL
    elif [ ! -f "$PGDATA/postmaster.pid" ]; then
        as_postgres pg_ctl -D "$PGDATA" -l "$log" -w start >/dev/null
    fi
    ;;
standby)
    install -d -o postgres -g postgres -m 0700 "$PGDATA"
    ;;
pgbouncer)
    : "${MIGRATE_PRIMARY_HOST:?set MIGRATE_PRIMARY_HOST}"
    install -d -o postgres -g postgres -m 0755 /etc/pgbouncer
    cat > /etc/pgbouncer/pgbouncer.ini <<INI
[databases]
app = host=$MIGRATE_PRIMARY_HOST port=5432 dbname=app
postgres = host=$MIGRATE_PRIMARY_HOST port=5432 dbname=postgres

[pgbouncer]
listen_addr = *
listen_port = 6432
unix_socket_dir =
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = 200
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
INI
    printf '"postgres" "%s"\n"repl" "%s"\n' "$MIGRATE_LAB_PASSWORD" "$MIGRATE_LAB_PASSWORD" \
        > /etc/pgbouncer/userlist.txt
    chown postgres:postgres /etc/pgbouncer/pgbouncer.ini /etc/pgbouncer/userlist.txt
    chmod 0600 /etc/pgbouncer/pgbouncer.ini /etc/pgbouncer/userlist.txt
    exec setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer /etc/pgbouncer/pgbouncer.ini
    ;;
*)
    echo "migrate-lab-entrypoint: unknown mode $1 (primary, standby or pgbouncer)" >&2
    exit 2
    ;;
esac
# Unset the password before idling: `docker exec` children do not inherit PID 2's environment,
# but nothing here needs it any more.
unset MIGRATE_LAB_PASSWORD
exec sleep infinity
