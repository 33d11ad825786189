#!/bin/sh
# Random passwords and keys for compose.yaml's trial, one file each in ./secrets/ (mode 600,
# never committed: .gitignore and .dockerignore exclude it). Existing files are kept, so it is
# safe to re-run. A real deployment provisions the same values from its secret store.
set -eu
umask 077
mkdir -p secrets
cd secrets
random() { openssl rand -hex 32; }
[ -f postgres_password ] || random > postgres_password
[ -f opsgate_owner_password ] || random > opsgate_owner_password
[ -f opsgate_app_password ] || random > opsgate_app_password
[ -f opsgate_migration_database_url ] ||
    printf 'postgresql://opsgate_owner:%s@db:5432/opsgate\n' "$(cat opsgate_owner_password)" \
        > opsgate_migration_database_url
[ -f opsgate_database_url ] ||
    printf 'postgresql://opsgate_app:%s@db:5432/opsgate\n' "$(cat opsgate_app_password)" \
        > opsgate_database_url
[ -f opsgate_secret_key ] || random > opsgate_secret_key
# The anchor signing key (Ed25519, PKCS#8 PEM): keep a copy; its public key goes to whoever
# verifies the anchors (OPSGATE_AUDIT_ANCHOR_TRUSTED_KEYS).
[ -f anchor_key ] || openssl genpkey -algorithm ed25519 -out anchor_key
# Compose mounts secret files as they are: the image's user (uid 10001) must read them.
chmod 644 ./*
echo "secrets written to $(pwd)"
