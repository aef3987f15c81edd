#!/bin/sh
# Make the image's base from Debian packages, for a machine that reaches a Debian mirror but
# no container registry (`make image-base`): Python 3.11 from Debian bookworm, its venv
# module, the CA bundle, tzdata (policies name IANA time zones) and libstdc++ (grpcio and
# protobuf's wheels link it), nothing else.
#
#   image/base.sh ENGINE TAG [SUITE] [MIRROR]
#
# The tree is made by mmdebstrap as root (no container runtime involved), without apt,
# manuals, translations or docs (copyright files kept), and with merged /usr done by
# mmdebstrap's hook rather than the usrmerge package (which would pull in perl). About
# 100 MB and 25 s. python3 is /usr/bin/python3 here (python:3.11-slim has /usr/local/bin).
set -eu

engine=${1:?usage: image/base.sh ENGINE TAG [SUITE] [MIRROR]}
tag=${2:?usage: image/base.sh ENGINE TAG [SUITE] [MIRROR]}
suite=${3:-bookworm}
mirror=${4:-}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-base.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# Quiet unless it fails: the merged-usr hook and the import are chatty.
log="$tmp/log"
fail() { cat "$log" >&2; echo "image/base.sh: $1 failed" >&2; exit 1; }

# shellcheck disable=SC2086 # $mirror is empty (mmdebstrap's default: the host's sources) or one URL
mmdebstrap --quiet --variant=essential \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=python3,python3-venv,ca-certificates,tzdata,libstdc++6 \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$suite" "$tmp/base.tar" $mirror >"$log" 2>&1 || fail mmdebstrap

"$engine" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/usr/bin/python3"]' \
    "$tmp/base.tar" "$tag" >"$log" 2>&1 || fail "$engine import"
echo "image/base.sh: $tag from Debian $suite ($(du -m "$tmp/base.tar" | cut -f1) MB)"
