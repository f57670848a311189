#!/usr/bin/env bash
# Installs the system packages the project needs when they are missing (Debian/Ubuntu):
# the PostgreSQL server and client (pg_dump, pg_restore, psql, initdb) for the local stack, and
# Debian's chromium for the browser tests (Playwright drives it; no browser download).
set -euo pipefail

have_postgres_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}

missing=()
have_postgres_server || missing+=(postgresql)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
[ -x /usr/bin/chromium ] || missing+=(chromium)

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
