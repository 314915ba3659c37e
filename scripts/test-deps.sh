#!/usr/bin/env bash
# System tools the tests use, from Debian's packages: a real Prometheus server and promtool (deploy/prometheus),
# docker-compose for `compose config` where the Docker CLI has no compose plugin (deploy/compose.yaml), and a
# PostgreSQL server (tests/store runs on SQLite and Postgres).
# Idempotent: installs only what is missing. Needs root (CI runs as root) or passwordless sudo.
set -euo pipefail
missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
echo "[test-deps] installing ${missing[*]} (Debian packages)"
$SUDO apt-get update -qq
# Only the binaries are needed: the tests start their own servers; the packages' service units are not used.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
