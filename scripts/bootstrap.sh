#!/bin/sh
# Make this Debian machine ready to run and test ipsec-cluster. Idempotent: installs only
# what is missing, and rebuilds .venv only when pyproject.toml changed.
set -eu
cd "$(dirname "$0")/.."

# Every package is named: the install runs with --no-install-recommends, so nothing a package
# merely recommends arrives (libstrongswan-standard-plugins, charon's openssl and gcm plugins, is
# only a Recommends of libstrongswan). virtme-ng (the kernel tier's VM) reads the kernel's
# version with `file`.
DEBS="etcd-server etcd-client strongswan-charon strongswan-swanctl libstrongswan-standard-plugins
libstrongswan-extra-plugins libcharon-extra-plugins libcharon-extauth-plugins freeradius
freeradius-utils nftables conntrack haproxy iproute2 iputils-ping procps iperf3 tcpdump curl
ca-certificates git make python3-venv qemu-system-x86 linux-image-amd64 busybox-static file"

missing=""
for p in $DEBS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "bootstrap: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# Debian starts these services on install; the project runs its own instances.
for svc in etcd strongswan-starter strongswan haproxy; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then systemctl stop "$svc" || true; fi
done

PY=${PYTHON:-python3}
stamp=.venv/.bootstrap-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: preparing .venv"
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]'; } \
            >.venv/bootstrap.log 2>&1; then
        cat .venv/bootstrap.log >&2
        echo "bootstrap: pip install failed (log above, also in .venv/bootstrap.log)" >&2
        exit 1
    fi
    echo "$want" > $stamp
fi
# charon only logs a plugin it cannot load and goes on; say now which one and which package.
if ! .venv/bin/python -m cluster.lab.plugins; then
    echo "bootstrap: FAILED: charon plugins the project loads are missing (lines above)" >&2
    exit 1
fi
