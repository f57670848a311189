#!/usr/bin/env bash
# Installs the system packages the project needs when they are missing (Debian/Ubuntu):
# the PostgreSQL server and client (pg_dump, pg_restore, psql, initdb) for the local stack,
# pgBackRest (physical backups and WAL archiving) and stunnel (a TLS terminator in front of the
# local S3 endpoint: pgBackRest speaks HTTPS only).
set -euo pipefail

have_postgres_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}

missing=()
have_postgres_server || missing+=(postgresql)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
command -v pgbackrest >/dev/null || missing+=(pgbackrest)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)

[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing system packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian's package starts a cluster of its own on 5432; the project never uses it.
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters --no-header 2>/dev/null | while read -r ver name _; do
    $SUDO pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
  done
fi
