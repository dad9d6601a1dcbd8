#!/bin/sh
# Install unicorn 2.1.4, built from its PyPI source distribution with our patches
# (patches/unicorn/*.patch, applied in name order), into the Python environment
# of the interpreter given as $1:
#
#   sh patches/unicorn/build.sh .venv/bin/python
#
# The wheel is built once per machine and kept in a cache outside the work tree,
# keyed by the sdist's hash, the patches and this script, so later `make`s and
# other clones reuse it; a fresh machine (CI) builds it from nothing (~30 s on
# 2 cores).  Cache: $PYLGUEST_CACHE, else $XDG_CACHE_HOME/pylguest, else
# ~/.cache/pylguest.
#
# Only the x86 target is built (the Guest is x86-32): the sdist's setup.py builds
# every architecture (3+ minutes) and has no switch for it, but its CMake takes
# UNICORN_ARCH, and setup.py packages a library it finds in prebuilt/ instead of
# building one.  So we run the sdist's CMake ourselves for the shared library
# alone, put it in prebuilt/, and let `pip wheel` make the wheel as usual.
# cmake comes from PyPI if the machine has none.
set -eu

PY=$1
VERSION=2.1.4
SDIST_SHA256=00567a70e323f749b419cd86bee4f9115beab7ebba32194581c090cbb7c59cff
HERE=$(cd "$(dirname "$0")" && pwd)
PIP="$PY -m pip --disable-pip-version-check"

KEY=$( { echo "$VERSION $SDIST_SHA256"; cat "$HERE"/*.patch "$HERE/build.sh"; } |
       sha256sum | cut -c1-16)
CACHE=${PYLGUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pylguest}
DIR=$CACHE/unicorn-$VERSION-$KEY

if ! ls "$DIR"/unicorn-*.whl >/dev/null 2>&1; then
    echo "building unicorn $VERSION (x86, patched) into $DIR" >&2
    mkdir -p "$CACHE"
    TMP=$(mktemp -d "$CACHE/build.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT INT TERM
    for tool in cc patch; do
        command -v $tool >/dev/null || { echo "lguest: building unicorn needs $tool" >&2; exit 1; }
    done
    CMAKE=cmake
    if ! command -v cmake >/dev/null; then
        $PIP install -q cmake
        CMAKE=$(dirname "$PY")/cmake
    fi

    $PIP download -q --no-binary :all: --no-deps -d "$TMP" "unicorn==$VERSION"
    echo "$SDIST_SHA256  $TMP/unicorn-$VERSION.tar.gz" | sha256sum -c --quiet
    tar xzf "$TMP/unicorn-$VERSION.tar.gz" --no-same-owner -C "$TMP"
    SRC=$TMP/unicorn-$VERSION
    for p in "$HERE"/*.patch; do
        patch -d "$SRC" -p1 --batch --quiet < "$p"
    done

    $CMAKE -S "$SRC/src" -B "$TMP/build" -DCMAKE_BUILD_TYPE=Release \
        -DUNICORN_ARCH=x86 -DUNICORN_BUILD_TESTS=off -DUNICORN_INSTALL=off \
        -DUNICORN_LEGACY_STATIC_ARCHIVE=off >"$TMP/cmake.log" 2>&1 ||
        { cat "$TMP/cmake.log" >&2; exit 1; }
    $CMAKE --build "$TMP/build" --target unicorn -j "$(nproc)" >"$TMP/build.log" 2>&1 ||
        { tail -50 "$TMP/build.log" >&2; exit 1; }
    cp "$TMP/build/libunicorn.so.2" "$SRC/prebuilt/"

    # A local version label says which build this is (pip show unicorn).
    SETUPTOOLS_SCM_PRETEND_VERSION=$VERSION+pylguest.$KEY \
        $PIP wheel -q --no-deps -w "$TMP/wheel" "$SRC"
    # Atomic publish: a clone that built the same key at the same time wins.
    mv -T "$TMP/wheel" "$DIR" 2>/dev/null || true
fi

$PIP install -q --force-reinstall --no-deps "$DIR"/unicorn-*.whl
