#!/bin/sh
# Writes deploy/.env (mode 600) with fresh secrets for deploy/compose.yaml, which Compose reads from there:
# the Postgres and Grafana passwords, the admin key and one client key. Refuses to overwrite an existing file.
#   sh deploy/generate-env.sh && docker compose -p distillery -f deploy/compose.yaml up -d
set -eu
out="$(dirname "$0")/.env"
if [ -e "$out" ]; then
  echo "$out exists; remove it first to generate new secrets" >&2
  exit 1
fi
key() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
client_key=$(key)
umask 077
cat > "$out" <<ENV
POSTGRES_PASSWORD=$(key)
GRAFANA_ADMIN_PASSWORD=$(key)
DISTILLERY_ADMIN_KEY=$(key)
DISTILLERY_API_KEYS=["$client_key"]
ENV
echo "wrote $out (client key: $client_key; the admin key is in the file)"
