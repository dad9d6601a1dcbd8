#!/bin/sh
# Build an i386 lguest Guest kernel from a Linux 3.x source tree you have.
#
#   tools/linux-kernel.sh [--config-only] LINUX_SRC [OUT_DIR]
#   make linux-kernel LINUX_SRC=~/src/linux-3.16 [LINUX_OUT=build/linux]
#   make linux-config LINUX_SRC=...         (the configuration step only)
#
# The build goes to OUT_DIR (default build/linux, outside git's view):
# the tree itself is only read.  The configuration is "allnoconfig" plus
# tools/lguest-guest.config (and LINUX_CONFIG_ADD, extra CONFIG_X=y lines
# separated by spaces); we check afterwards that every option asked for is
# really on, since Kconfig silently drops one whose dependencies are missing.
#
# A 3.x tree predates today's compilers; what a modern gcc needs:
#   - KCFLAGS: -std=gnu89 (3.x C is gnu89: "inline" semantics), -fno-pie
#     -fno-pic (distributions default to PIE; the kernel is not relocatable
#     code of that sort), -fcf-protection=none (no endbr32 instructions),
#     -fno-stack-protector (distributions turn it on by default); each only
#     if this gcc knows it.  Not -fno-stack-protector when the configuration
#     asks for a stack protector (CC_STACKPROTECTOR*): KCFLAGS come last on
#     gcc's command line, so it would silently build a kernel without one.
#   - HOSTCFLAGS with -fcommon for the build's own host tools, which define
#     the same variable in several files (gcc 10 made that an error).  Never
#     in KCFLAGS: 3.16's linker script has no *(COMMON) in .bss, so common
#     symbols would land past __bss_stop, outside the memory the kernel
#     reserves for itself.
#   - linux/compiler-gccN.h for gcc N >= 5, which a 3.x tree lacks: we put
#     a copy of its compiler-gcc4.h, in the output directory's include/.
set -eu

config_only=
if [ "${1:-}" = --config-only ]; then
    config_only=yes
    shift
fi
src=${1:-}
top=$(cd "$(dirname "$0")/.." && pwd)
out=${2:-$top/build/linux}
jobs=${LINUX_JOBS:-$(nproc 2>/dev/null || echo 2)}
fragment=$top/tools/lguest-guest.config

die() {
    echo "linux-kernel: $*" >&2
    exit 1
}

[ -n "$src" ] || die "give the Linux source tree: make linux-kernel LINUX_SRC=path/to/linux-3.x"
[ -f "$src/Makefile" ] && [ -f "$src/arch/x86/lguest/boot.c" ] ||
    die "$src is not a Linux source tree with lguest (arch/x86/lguest/boot.c)"
version=$(sed -n 's/^VERSION = //p' "$src/Makefile" | head -n 1)
[ "$version" = 3 ] || die "$src is Linux $version.x; this recipe is for 3.x trees"
for tool in gcc make bc perl; do
    command -v $tool >/dev/null 2>&1 || die "needs $tool to build a kernel"
done
echo 'int x;' | gcc -m32 -x c -c -o /dev/null - 2>/dev/null ||
    die "gcc can't make 32-bit code (-m32): install gcc-multilib"

src=$(cd "$src" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Flags this gcc understands, from the list above.
kcflags=
for f in -std=gnu89 -fno-pie -fno-pic -fcf-protection=none -fno-stack-protector; do
    if echo 'int x;' | gcc -m32 -Werror $f -x c -c -o /dev/null - 2>/dev/null; then
        kcflags="$kcflags $f"
    fi
done
kcflags=${kcflags# }
hostcflags="-O2 -fomit-frame-pointer -fcommon"

gccmajor=$(gcc -dumpversion | cut -d. -f1)
if [ "$gccmajor" -ge 5 ] && [ ! -f "$src/include/linux/compiler-gcc$gccmajor.h" ]; then
    [ -f "$src/include/linux/compiler-gcc4.h" ] ||
        die "$src has neither compiler-gcc$gccmajor.h nor compiler-gcc4.h"
    mkdir -p "$out/include/linux"
    cp "$src/include/linux/compiler-gcc4.h" "$out/include/linux/compiler-gcc$gccmajor.h"
fi

kmake() {
    make -C "$src" O="$out" ARCH=i386 KCFLAGS="$kcflags" HOSTCFLAGS="$hostcflags" "$@"
}

# Configure: allnoconfig with our options forced on.
allconfig=$out/lguest-allconfig
cp "$fragment" "$allconfig"
for line in ${LINUX_CONFIG_ADD:-}; do
    echo "$line" >>"$allconfig"
done
kmake -s KCONFIG_ALLCONFIG="$allconfig" allnoconfig >"$out/config.log" 2>&1 ||
    die "configuring failed: $(tail -n 1 "$out/config.log")"
# Our fragment's memory model (HIGHMEM4G) is only a default: one of its
# Kconfig choice given in LINUX_CONFIG_ADD (NOHIGHMEM, HIGHMEM64G for PAE)
# replaces it, and then ours is rightly off.
memory_models="CONFIG_NOHIGHMEM CONFIG_HIGHMEM4G CONFIG_HIGHMEM64G"
user_model=
for line in ${LINUX_CONFIG_ADD:-}; do
    for m in $memory_models; do
        [ "$line" != "$m=y" ] || user_model=$m
    done
done
missing=
for opt in $(sed -n 's/^\(CONFIG_[A-Za-z0-9_]*\)=y$/\1/p' "$allconfig"); do
    if [ -n "$user_model" ] && [ "$opt" != "$user_model" ]; then
        case " $memory_models " in *" $opt "*) continue ;; esac
    fi
    grep -qx "$opt=y" "$out/.config" || missing="$missing $opt"
done
[ -z "$missing" ] || die "this tree's Kconfig would not turn on:$missing (see $out/.config)"
# A configuration with a stack protector gets one (see the flags above).
if grep -q '^CONFIG_CC_STACKPROTECTOR=y' "$out/.config"; then
    kcflags=$(echo "$kcflags" | sed 's/ *-fno-stack-protector//')
fi
echo "linux-kernel: configured Linux $(kmake -s kernelversion 2>/dev/null) in $out (KCFLAGS=$kcflags)"
[ -z "$config_only" ] || exit 0

# Build: vmlinux (ELF) and arch/x86/boot/bzImage; either boots.
kmake -j"$jobs" vmlinux bzImage >"$out/build.log" 2>&1 ||
    die "the build failed: $(grep -m 1 -E 'error|Error' "$out/build.log" || tail -n 1 "$out/build.log")"
echo "linux-kernel: built $out/vmlinux and $out/arch/x86/boot/bzImage"
echo "linux-kernel: boot it: make run-linux KERNEL=$out/vmlinux"
