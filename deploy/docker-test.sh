#!/usr/bin/env bash
# `make docker-test`: the image builds and the compose fleet serves. Steps: build the image, start N replicas behind
# nginx (docker compose, or Debian's docker-compose), wait for /readyz through the balancer, send one /predict, then
# bench/fleet.py sends REQUESTS requests and kills one replica mid-run (0 errors expected), and tears it all down.
#
# Where public registries cannot be reached (this machine): BASE_IMAGE defaults to dnd-base:bookworm, built by
# deploy/base-image.sh from a Debian root file system when absent (it also serves as the balancer's nginx), and, with
# no PIP_INDEX given, the wheels come from a local index: `pip download` of exactly constraints.txt's versions
# (with what the host's pip can reach) into build/wheelhouse, served on 127.0.0.1 by pypiserver to a build that uses
# the host's network. With registry access: BASE_IMAGE=python:3.11-slim NGINX_IMAGE=nginx:1.27-alpine
# PIP_INDEX=https://pypi.org/simple TORCH_INDEX=https://download.pytorch.org/whl/cpu make docker-test
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

if [[ -z "${PIP_INDEX:-}" ]]; then
    echo "== local wheel index (build/wheelhouse, pypiserver on 127.0.0.1:$INDEX_PORT)"
    "$PY" -m pip install -q -c constraints.txt pypiserver
    "$PY" -m pip download -q -d build/wheelhouse -c constraints.txt torch torchvision pip setuptools wheel .
    "$PY" -m pypiserver run -i 127.0.0.1 -p "$INDEX_PORT" --disable-fallback build/wheelhouse >/tmp/dnd-pypiserver.log 2>&1 &
    index_pid=$!
    PIP_INDEX="http://127.0.0.1:$INDEX_PORT/simple/"
    TORCH_INDEX="$PIP_INDEX"
    for _ in $(seq 30); do curl -sf "$PIP_INDEX" >/dev/null && break; sleep 1; done
fi
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"

echo "== docker build ($DND_IMAGE from $BASE_IMAGE)"
docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_INDEX="$TORCH_INDEX" \
    --build-arg PIP_INDEX="$PIP_INDEX" -t "$DND_IMAGE" .

echo "== compose up: $REPLICAS replicas behind nginx ($NGINX_IMAGE)"
"${compose[@]}" up -d --no-build --scale detector="$REPLICAS"
for i in $(seq 120); do
    code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/readyz || true)
    [[ "$code" == 200 ]] && break
    [[ $i == 120 ]] && { "${compose[@]}" logs --tail 50; echo "/readyz never answered 200 (last: $code)"; exit 1; }
    sleep 2
done
echo "/readyz: 200"
body=$(curl -sf -X POST -H 'content-type: image/png' --data-binary @service/static/samples/clean-cat.png \
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
