#!/bin/sh
# Make pylguest's Linux initramfs: Debian's statically linked busybox for
# i386 plus our own /init, /etc/profile and /scripts (images/linux-init/),
# packed as a gzipped "newc" cpio archive, the format the kernel unpacks.
#
#   tools/linux-initrd.sh images/linux-initrd.cpio.gz     (make does this)
#
# The busybox-static:i386 package is downloaded once into images/cache/ with
# apt-get; that may first need the i386 architecture added to dpkg and the
# package lists updated, which needs root (or password-less sudo).  Put a
# busybox-static_*_i386.deb in images/cache/ yourself and none of that runs.
# Whatever can't be done ends the script with one line saying why.
set -eu

out=$1
top=$(cd "$(dirname "$0")/.." && pwd)
cache=$top/images/cache
tree=$top/images/linux-init

die() {
    echo "linux-initrd: $*" >&2
    exit 1
}

# Run a command as root: directly, or through sudo if that asks no password.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

newest_deb() {
    ls "$cache"/busybox-static_*_i386.deb 2>/dev/null | sort -V | tail -n 1
}

log=$(mktemp)
stage=$(mktemp -d)
trap 'rm -rf "$stage" "$log"' EXIT
last_words() { tail -n 1 "$log" | cut -c 1-160; }

# 1. busybox-static:i386, from the cache or from Debian.
mkdir -p "$cache"
deb=$(newest_deb)
if [ -z "$deb" ]; then
    command -v apt-get >/dev/null 2>&1 ||
        die "needs Debian's apt-get to fetch busybox-static:i386 (or put busybox-static_*_i386.deb in images/cache/)"
    if ! { dpkg --print-architecture; dpkg --print-foreign-architectures; } | grep -qx i386; then
        as_root dpkg --add-architecture i386 >"$log" 2>&1 ||
            die "the i386 architecture is not enabled and we are not root: run 'sudo dpkg --add-architecture i386 && sudo apt-get update'"
        as_root apt-get update -qq >"$log" 2>&1 ||
            die "apt-get update failed: $(last_words)"
    fi
    # Known to dpkg, but maybe not yet in the package lists.
    if ! apt-cache show busybox-static:i386 >/dev/null 2>&1; then
        as_root apt-get update -qq >"$log" 2>&1 ||
            die "busybox-static:i386 is unknown and 'apt-get update' can't run here: $(last_words)"
        apt-cache show busybox-static:i386 >/dev/null 2>&1 ||
            die "no busybox-static:i386 in this machine's apt sources"
    fi
    (cd "$cache" && apt-get download -q busybox-static:i386) >"$log" 2>&1 ||
        die "apt-get download busybox-static:i386 failed: $(last_words)"
    deb=$(newest_deb)
    [ -n "$deb" ] || die "apt-get download left no busybox-static_*_i386.deb in images/cache/"
fi
command -v dpkg-deb >/dev/null 2>&1 || die "needs dpkg-deb to unpack $deb"
dpkg-deb -x "$deb" "$stage/deb" 2>"$log" || die "dpkg-deb -x $deb failed: $(last_words)"
[ -f "$stage/deb/bin/busybox" ] || die "$deb has no bin/busybox"

# 2. cpio, to pack the archive.
if ! command -v cpio >/dev/null 2>&1; then
    as_root apt-get install -y -qq cpio >"$log" 2>&1 ||
        die "needs cpio, and 'apt-get install cpio' can't run here: $(last_words)"
fi

# 3. The tree: busybox, our files, the mount points /init uses.  The applet
# links are made by /init at boot (busybox --install -s): they'd need the
# i386 busybox to run on this machine to be listed here.
root=$stage/root
mkdir -p "$root"
(cd "$root" && mkdir -p bin sbin usr/bin usr/sbin dev proc sys tmp run mnt root etc scripts)
install -m 0755 "$stage/deb/bin/busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 "$tree/init" "$root/init"
install -m 0644 "$tree/etc/profile" "$root/etc/profile"
for s in "$tree"/scripts/*; do
    [ -f "$s" ] && install -m 0755 "$s" "$root/scripts/"
done
chmod 1777 "$root/tmp"

# 4. Pack, reproducibly: sorted names, owner root, fixed times, no gzip name.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet >"$stage/initrd.cpio") 2>"$log" ||
    die "cpio failed: $(last_words)"
gzip -9n <"$stage/initrd.cpio" >"$out.tmp"
mv "$out.tmp" "$out"
echo "linux-initrd: $out from $(basename "$deb")"
