#!/usr/bin/env bash
# The baseline for bench/compile.ts: what an administrator would type by hand for the same
# build (extract, defconfig, sed the fragment in, oldconfig, make -j2, make install).
# Usage: baseline-compile.sh TARBALL WORKDIR COMPAT_HEADER
set -eu
tarball=$1 work=$2 compat=$3
mkdir -p "$work"
cd "$work"
tar xjf "$tarball"
cd busybox-*/
make defconfig >/dev/null
sed -i -e 's/^# CONFIG_STATIC is not set$/CONFIG_STATIC=y/' \
       -e "s|^CONFIG_EXTRA_CFLAGS=.*|CONFIG_EXTRA_CFLAGS=\"-include $compat\"|" .config
yes '' | make oldconfig >/dev/null || true
make -j2 >/dev/null 2>&1
make KBUILD_NOCMDDEP=1 CONFIG_PREFIX="$work/install" install >/dev/null
test -x "$work/install/bin/busybox"
