#!/usr/bin/env bash
# Installs the system packages the project needs when they are missing (Debian/Ubuntu):
# the PostgreSQL server and client (pg_dump, pg_restore, psql, initdb) for the local stack,
# pgBackRest (physical backups and WAL archiving) and stunnel (a TLS terminator in front of the
# local S3 endpoint: pgBackRest speaks HTTPS only), unixODBC with the FreeTDS ODBC driver
# (pyodbc's way to SQL Server and to its local stand-in), and Debian's chromium for the browser
# tests (Playwright drives it; no browser download).
set -euo pipefail

have_postgres_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}
have_odbc_manager() {
  compgen -G "/usr/lib/*/libodbc.so.2" >/dev/null
}
freetds_driver() {
  compgen -G "/usr/lib/*/odbc/libtdsodbc.so" | head -n1
}
freetds_registered() {
  grep -qs '^\[FreeTDS\]' /etc/odbcinst.ini
}

missing=()
have_postgres_server || missing+=(postgresql)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
command -v pgbackrest >/dev/null || missing+=(pgbackrest)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
have_odbc_manager || missing+=(unixodbc)
[ -n "$(freetds_driver || true)" ] || missing+=(tdsodbc)
[ -x /usr/bin/chromium ] || missing+=(chromium)

[ ${#missing[@]} -eq 0 ] && freetds_registered && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]:-the FreeTDS ODBC driver entry}" >&2; exit 1; }
  SUDO="sudo"
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Debian's package starts a cluster of its own on 5432; the project never uses it.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _; do
      $SUDO pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
    done
  fi
fi

# tdsodbc registers the driver as [FreeTDS] in /etc/odbcinst.ini; make sure the name resolves
# (DRIVER={FreeTDS} in connection strings) even where that step did not run.
if ! freetds_registered; then
  driver=$(freetds_driver)
  echo "registering the FreeTDS ODBC driver ($driver) in /etc/odbcinst.ini"
  printf '[FreeTDS]\nDescription=TDS driver (Sybase/MS SQL)\nDriver=%s\nUsageCount=1\n' "$driver" \
    | $SUDO tee -a /etc/odbcinst.ini >/dev/null
fi
