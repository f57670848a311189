#!/usr/bin/env bash
# `make deploy-check` (opt-in, not part of `make test`): the container shape for real, with
# rootless-capable Debian tooling: build deploy/Dockerfile with podman, bring
# deploy/docker-compose.yaml up with podman-compose, run one backup through the daemon (the
# whole-database dump of a small seeded database living in the compose file's own PostgreSQL),
# check its manifest in the store volume, tear everything down (also on failure).
#
# Needs what a build needs: the base images (python:3.11-slim-bookworm, postgres:15) from a
# registry, and network from inside build containers to Debian's archive and PyPI. Where the
# machine has neither (shared/FACTS.md: nothing can be pulled), set BASE_IMAGE to a local image
# of Debian bookworm with Python 3.11 (e.g. a debootstrap root filesystem imported with
# `podman import`) and POSTGRES_IMAGE to a local PostgreSQL image.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=backup_pipelines_check
IMAGE=localhost/backup_pipelines:check
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:15}
PORT=${DEPLOY_CHECK_PORT:-13000}
WORK=$(mktemp -d)
RUNTIME_ARGS=(--runtime runc)   # crun failed here with locally imported images (FACTS)

need() { command -v "$1" >/dev/null || missing+=("$2"); }
missing=()
need podman podman
need curl curl
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}" runc uidmap slirp4netns
fi
[ -x .venv/bin/podman-compose ] || python3 -m uv pip install -q --python .venv/bin/python "podman-compose>=1.2"
# A copy of the compose file beside throwaway env files: the operator's deploy/*.env stay untouched.
cp deploy/docker-compose.yaml "$WORK/docker-compose.yaml"
COMPOSE=(.venv/bin/podman-compose -p "$PROJECT" -f "$WORK/docker-compose.yaml")

cleanup() {
  "${COMPOSE[@]}" down -v >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== build $IMAGE from $BASE_IMAGE"
podman build "${RUNTIME_ARGS[@]}" --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --build-arg PYTHON_IMAGE="$BASE_IMAGE" -f deploy/Dockerfile -t "$IMAGE" .

password=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
sed -e "s/change-me/$password/" deploy/dagster.env.example > "$WORK/dagster.env"
sed -e "s|^DATABASE_URL=.*|DATABASE_URL=postgresql://dagster:$password@dagster_postgres:5432/agent_memory|" \
    -e "s|^TYPESENSE_URL=.*|TYPESENSE_URL=|" -e "s|^QDRANT_URL=.*|QDRANT_URL=|" \
    -e "s|^BACKUP_AUTOMATION_OFF=.*|BACKUP_AUTOMATION_OFF=*|" \
    deploy/backup_pipelines.env.example > "$WORK/backup_pipelines.env"

echo "== compose up"
BACKUP_PIPELINES_IMAGE=$IMAGE DAGSTER_POSTGRES_IMAGE=$POSTGRES_IMAGE DAGSTER_WEBSERVER_PORT=$PORT \
  "${COMPOSE[@]}" up -d --no-build
deadline=$((SECONDS + 300))
until curl -fsS "http://127.0.0.1:$PORT/server_info" >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { "${COMPOSE[@]}" logs --tail 50; echo "webserver not up" >&2; exit 1; }
  sleep 3
done

echo "== seed a small source database and run one backup through the daemon"
podman exec "${PROJECT}_dagster_postgres_1" psql -U dagster -d dagster -c "CREATE DATABASE agent_memory"
podman exec "${PROJECT}_backup_pipelines_code_1" python -m backup_pipelines.devstack.sample_data \
  --database-url "postgresql://dagster:$password@dagster_postgres:5432/agent_memory" --workspaces 1 --memories 50
date=$(date -u -d yesterday +%F)
query='mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename ... on LaunchRunSuccess { run { runId } } } }'
params="{\"selector\": {\"repositoryLocationName\": \"backup_pipelines\", \"repositoryName\": \"__repository__\", \"jobName\": \"postgres_full_backup_job\"}, \"executionMetadata\": {\"tags\": [{\"key\": \"dagster/partition\", \"value\": \"$date\"}]}}"
run_id=$(curl -fsS "http://127.0.0.1:$PORT/graphql" -H 'Content-Type: application/json' \
  -d "{\"query\": $(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$query"), \"variables\": {\"p\": $params}}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["launchRun"]["run"]["runId"])')
echo "run $run_id"
deadline=$((SECONDS + 600))
while :; do
  status=$(curl -fsS "http://127.0.0.1:$PORT/graphql" -H 'Content-Type: application/json' \
    -d "{\"query\": \"{ runOrError(runId: \\\"$run_id\\\") { ... on Run { status } } }\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["runOrError"]["status"])')
  case $status in SUCCESS) break ;; FAILURE|CANCELED) echo "run $status" >&2; exit 1 ;; esac
  [ $SECONDS -lt $deadline ] || { echo "run still $status" >&2; exit 1; }
  sleep 5
done
podman exec "${PROJECT}_backup_pipelines_code_1" \
  test -f "/var/lib/backup_pipelines/store/postgres/full_dump/date=$date/manifest.json"
echo "deploy-check: image built, compose up, one backup SUCCESS with its manifest in the store"
