#!/usr/bin/env bash
# Installs the build tree BUILD into a temporary prefix, then builds
# tests/install/main.c outside the source tree against the installed files,
# once with find_package(fastvar) and once with pkg-config, and runs both.
# Also checks that libfastvar.so has its SONAME and exports the C API only.
set -euo pipefail
BUILD=$(cd "$1" && pwd)
SRC=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cmake --install "$BUILD" --prefix "$TMP/prefix" > "$TMP/install.log"
LIBDIR=$(dirname "$(find "$TMP/prefix" -name 'libfastvar.so' | head -1)")
test -f "$TMP/prefix/include/fastvar/fastvar.h"
readelf -d "$LIBDIR/libfastvar.so" | grep -q 'SONAME.*libfastvar\.so\.0'
# Exactly the functions the header declares.
api=$(grep -oE '\bfastvar_[a-z_0-9]+\(' "$TMP/prefix/include/fastvar/fastvar.h" | tr -d '(' | sort -u)
exported=$(nm -D --defined-only "$LIBDIR/libfastvar.so" | awk '$2 ~ /[TDBRWVi]/ {print $3}' | sed 's/@.*//' | sort -u)
if [ "$api" != "$exported" ]; then
  echo "libfastvar.so exports differ from the header's functions:"; diff <(echo "$api") <(echo "$exported"); exit 1
fi
# find_package
cmake -S "$SRC" -B "$TMP/cm" -DCMAKE_PREFIX_PATH="$TMP/prefix" > "$TMP/cm.log"
cmake --build "$TMP/cm" > "$TMP/cmb.log"
LD_LIBRARY_PATH="$LIBDIR" "$TMP/cm/consumer"
# pkg-config
export PKG_CONFIG_PATH="$LIBDIR/pkgconfig"
cc "$SRC/main.c" -o "$TMP/pc" $(pkg-config --cflags --libs fastvar)
LD_LIBRARY_PATH="$LIBDIR" "$TMP/pc"
echo "install test: find_package and pkg-config consumers ran"
