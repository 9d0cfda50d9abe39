#!/bin/sh
# pip install inside the image build, from whatever package source pip is configured with: the base image's pip
# configuration, or pip's own variables passed as build arguments (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_FIND_LINKS, PIP_NO_INDEX, PIP_TRUSTED_HOST). An argument passed empty (as compose passes an unset one) is
# dropped here, so it never stands for an empty index. TORCH_INDEX, when set, is the index torch and torchvision
# come from (one serving CPU-only wheels keeps the image ~2 GB smaller); unset, they come from pip's source too.
#   pip-install.sh [--torch] ARGS...
set -eu
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_NO_INDEX PIP_TRUSTED_HOST; do
    eval "val=\${$v:-}"
    if [ -n "$val" ]; then export "$v=$val"; else unset "$v"; fi
done
if [ "${1:-}" = "--torch" ]; then
    shift
    if [ -n "${TORCH_INDEX:-}" ]; then set -- --index-url "$TORCH_INDEX" "$@"; fi
fi
exec pip install "$@"
