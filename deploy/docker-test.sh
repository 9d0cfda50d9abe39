#!/usr/bin/env bash
# `make docker-test`: the image builds and the compose fleet serves. Steps: build the image, start N replicas behind
# nginx (docker compose, or Debian's docker-compose), wait for /readyz through the balancer, send one /predict, then
# bench/fleet.py sends REQUESTS requests and kills one replica mid-run (0 errors expected), and tears it all down.
#
# Where public images cannot be pulled: BASE_IMAGE defaults to dnd-base:bookworm, built by deploy/base-image.sh from
# a Debian root file system when absent (it also serves as the balancer's nginx). Without PIP_INDEX_URL, the wheels
# come from a local wheelhouse: `pip download` of exactly constraints.txt's versions, from whatever the host's pip is
# configured with, into build/wheelhouse, served on 127.0.0.1 by Python's http.server as pip "find links" to a build
# that uses the host's network (the host's own pip settings, which may name host paths, are not passed into the
# build). With an index the build can reach: BASE_IMAGE=python:3.11-slim NGINX_IMAGE=nginx:1.27-alpine
# PIP_INDEX_URL=<index> make docker-test (TORCH_INDEX=<index with CPU-only torch wheels> keeps the image small).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
REPLICAS="${REPLICAS:-2}"
REQUESTS="${REQUESTS:-10000}"
BASE_IMAGE="${BASE_IMAGE:-dnd-base:bookworm}"
export NGINX_IMAGE="${NGINX_IMAGE:-$BASE_IMAGE}"
export DND_IMAGE="${DND_IMAGE:-dnd-detector:test}"
INDEX_PORT="${INDEX_PORT:-8765}"
PROJECT=dnd-test
export COMPOSE_PROJECT_NAME=$PROJECT

docker info >/dev/null 2>&1 || { echo "no Docker engine answers (start dockerd)"; exit 1; }
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose --compatibility); fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && ! docker pull "$BASE_IMAGE" >/dev/null 2>&1; then
    [[ "$BASE_IMAGE" == dnd-base:* ]] || { echo "base image $BASE_IMAGE: not present and cannot be pulled"; exit 1; }
    deploy/base-image.sh "$BASE_IMAGE"
fi

index_pid=""
cleanup() {
    "${compose[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true
    [[ -n "$index_pid" ]] && kill "$index_pid" 2>/dev/null || true
}
trap cleanup EXIT

build_args=(--build-arg BASE_IMAGE="$BASE_IMAGE")
if [[ -n "${PIP_INDEX_URL:-}" ]]; then
    build_args+=(--build-arg PIP_INDEX_URL="$PIP_INDEX_URL")
    [[ -n "${TORCH_INDEX:-}" ]] && build_args+=(--build-arg TORCH_INDEX="$TORCH_INDEX")
else
    echo "== local wheelhouse (build/wheelhouse, http.server on 127.0.0.1:$INDEX_PORT)"
    "$PY" -m pip download -q -d build/wheelhouse -c constraints.txt torch torchvision pip setuptools wheel .
    "$PY" -m http.server --bind 127.0.0.1 --directory build/wheelhouse "$INDEX_PORT" >/tmp/dnd-wheelhouse.log 2>&1 &
    index_pid=$!
    links="http://127.0.0.1:$INDEX_PORT/"
    for _ in $(seq 30); do curl -sf "$links" >/dev/null && break; sleep 1; done
    build_args+=(--build-arg PIP_FIND_LINKS="$links" --build-arg PIP_NO_INDEX=1)
fi

echo "== docker build ($DND_IMAGE from $BASE_IMAGE)"
docker build --network host "${build_args[@]}" -t "$DND_IMAGE" .

echo "== compose up: $REPLICAS replicas behind nginx ($NGINX_IMAGE)"
"${compose[@]}" up -d --no-build --scale detector="$REPLICAS"
for i in $(seq 120); do
    code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/readyz || true)
    [[ "$code" == 200 ]] && break
    [[ $i == 120 ]] && { "${compose[@]}" logs --tail 50; echo "/readyz never answered 200 (last: $code)"; exit 1; }
    sleep 2
done
echo "/readyz: 200"
body=$(curl -sf -X POST -H 'content-type: image/png' --data-binary @dnd/service/static/samples/clean-cat.png \
    http://127.0.0.1:8080/predict)
echo "/predict: $body"
"$PY" - "$body" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
p = r["predictions"][0]
assert p["label"] == "cat" and isinstance(p["is_adversarial"], bool), r
EOF

echo "== fleet: $REQUESTS requests, one replica killed mid-run"
"$PY" bench/fleet.py --url http://127.0.0.1:8080 --project "$PROJECT" --requests "$REQUESTS" --kill 1
echo "docker-test passed"
