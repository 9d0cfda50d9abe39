#!/usr/bin/env bash
# A base image for the Dockerfile and the compose balancer where public images cannot be pulled: a Debian bookworm
# root file system (debootstrap) with python3.11 + venv + pip, nginx and wget, imported into the local Docker engine.
# The packages come from the Debian archive apt on this host is configured with (its bookworm "main" source, as
# `apt-get indextargets` reports it), or from DEBIAN_MIRROR when set.
#   deploy/base-image.sh [TAG]        (default dnd-base:bookworm; needs root, debootstrap and a running dockerd)
# Then: docker build --build-arg BASE_IMAGE=dnd-base:bookworm ...   and   NGINX_IMAGE=dnd-base:bookworm docker compose up
set -euo pipefail
tag="${1:-dnd-base:bookworm}"
suite=bookworm
mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
    # apt's own view of its sources (sources.list or deb822 .sources alike); needs `apt-get update` to have run
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Created-By: Packages' 2>/dev/null \
        | awk -v s="$suite" '$2 == s && $3 == "main" {print $1; exit}')
fi
[[ -n "$mirror" ]] || { echo "no Debian $suite main source in apt's configuration: run apt-get update or set DEBIAN_MIRROR"; exit 1; }
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,nginx-light,wget \
    "$suite" "$root" "$mirror"
# the image runs no init: drop apt's caches and the package lists (~100 MB) it will not need
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# the official nginx images log to the container's output; so does this one (docker logs)
ln -sf /dev/stdout "$root"/var/log/nginx/access.log
ln -sf /dev/stderr "$root"/var/log/nginx/error.log
tar -C "$root" -c . | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$tag"
echo "imported $tag"
