#!/bin/sh
# `make fresh-check`: prove that the two commands work where nothing was installed by hand.
#
# Builds a minimal Debian 12 root (mmdebstrap --variant=minbase, from this machine's own apt
# sources; cached as a tarball between runs), clones the project's committed HEAD into it, and
# runs `make bootstrap` and `make demo` there (and `make test` with TEST=1) in a chroot with
# /proc, /sys, /dev and a /run of its own (where `ip netns` keeps its namespaces) mounted. Everything is unmounted and removed
# afterwards, also on failure or interrupt, and every process left in the root is killed.
#
# What the root gets besides minbase is only what a machine of this workplace has by its own
# set-up, not by the project: `make` (the entry point itself), the machine's DNS resolver, its
# apt options and local CA certificates (package mirrors are reached through them), pip's CA
# setting, and a policy-rc.d that keeps package scripts from starting services in the chroot
# (a chroot has no init; the project starts every service it needs itself).
#
# Environment: TEST=1 also runs `make test`; FRESH_CACHE=DIR keeps the tarball (default
# /var/cache/ipsec-cluster-fresh); FRESH_REBUILD=1 builds it anew; FRESH_KEEP=1 keeps the root.
set -eu
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { echo "fresh-check: $*"; }
fail() { echo "fresh-check: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (chroot, mounts, network namespaces)"
if ! command -v mmdebstrap >/dev/null 2>&1; then
    say "installing mmdebstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap \
        >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null; } \
        || fail "cannot install mmdebstrap"
fi

cache=${FRESH_CACHE:-/var/cache/ipsec-cluster-fresh}
tarball=$cache/bookworm-minbase.tar
mkdir -p "$cache"
if [ ! -s "$tarball" ] || [ "${FRESH_REBUILD:-0}" = 1 ]; then
    sources=""
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [ -s "$f" ] && sources="$sources $f"
    done
    [ -n "$sources" ] || fail "this machine has no apt sources to build the root from"
    aptopts=""
    for f in /etc/apt/apt.conf.d/99*; do [ -f "$f" ] && aptopts="$aptopts --aptopt=$f"; done
    say "building a minimal Debian 12 root (mmdebstrap minbase) into $tarball"
    # shellcheck disable=SC2086
    mmdebstrap --quiet --variant=minbase --format=tar --include=make $aptopts bookworm "$tarball.part" \
        $sources || fail "mmdebstrap could not build the root"
    mv "$tarball.part" "$tarball"
fi

root=$(mktemp -d /var/tmp/ipsec-cluster-fresh.XXXXXX)
cleanup() {
    status=$?
    trap - EXIT INT TERM
    # every process whose root is the fresh root: started there by the bootstrap, demo or tests
    for p in /proc/[0-9]*; do
        if [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ]; then
            kill -9 "${p#/proc/}" 2>/dev/null || true
        fi
    done
    if mountpoint -q "$root" 2>/dev/null; then
        # network namespaces the run left: their mounts are the root's own (private)
        for ns in "$root"/run/netns/*; do
            [ -e "$ns" ] && { umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true; }
        done
        umount -R "$root" 2>/dev/null || umount -R -l "$root" 2>/dev/null || true
    fi
    if [ "${FRESH_KEEP:-0}" = 1 ]; then
        say "kept the root in $root"
    elif grep -q " $root" /proc/mounts; then
        echo "fresh-check: something is still mounted below $root; not removing it" >&2
    else
        rm -rf "$root"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tar -C "$root" -xf "$tarball"
cp /etc/resolv.conf "$root/etc/resolv.conf"
if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

git clone --quiet "$repo" "$root/root/ipsec-cluster" || fail "cannot clone $repo"
say "cloned $(git -C "$repo" rev-parse --short HEAD) into the fresh root"

# The root is a mount point (`ip netns exec` makes / a slave mount in its namespace) and a
# private one: nothing mounted or unmounted below it propagates back to this machine (its own
# network namespaces included: the root's /run, where `ip netns` keeps them, is a tmpfs of
# its own). /sys and /dev are slaves: they see the machine's, and never change them.
mount --bind "$root" "$root"
mount --make-rprivate "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys"
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"

steps="make bootstrap && make demo"
[ "${TEST:-0}" = 1 ] && steps="$steps && make test"
say "running in the fresh root: $steps"
# in the background, so that a signal to this script is handled at once (sh runs no trap
# while a foreground command runs); a background job starts with SIGINT and SIGQUIT ignored,
# which every process below would inherit (a Ctrl-C test then sees no Ctrl-C): env puts every
# signal back to its default
chroot "$root" /usr/bin/env --default-signal -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" \
    sh -c "cd /root/ipsec-cluster && $steps" &
if wait $!; then
    say "PASSED: $steps in a fresh Debian 12 root"
else
    fail "'$steps' failed in a fresh Debian 12 root (output above)"
fi
