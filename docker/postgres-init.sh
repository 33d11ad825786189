#!/bin/sh
# Run once by the postgres image on an empty data directory (compose.yaml mounts it into
# /docker-entrypoint-initdb.d): the owner role that `opsgate db upgrade` connects as, allowed to
# create the app role (CREATEROLE) but not a superuser, and the database it owns.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v owner_password="$(cat /run/secrets/opsgate_owner_password)" <<'SQL'
CREATE ROLE opsgate_owner LOGIN CREATEROLE PASSWORD :'owner_password';
CREATE DATABASE opsgate OWNER opsgate_owner;
SQL
