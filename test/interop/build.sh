#!/usr/bin/env bash
# Builds the C++ interop/bench programs into OUT (default .cache/interop/manual).
# Needs capnproto + libcapnp-dev (Debian 12: capnp 0.9.2), g++ and pkg-config.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/.cache/interop/manual}"
mkdir -p "$out/gen"
capnp compile -oc++:"$out/gen" --src-prefix="$root/schema" "$root/schema/common.capnp" "$root/schema/worker.capnp"
flags="-O2 -std=c++17 -I$out/gen -I$here/cpp $(pkg-config --cflags capnp-rpc)"
libs="$(pkg-config --libs capnp-rpc)"
# Two at a time (2 cores); `wait $pid` so a failed compile fails the build.
g++ $flags -c "$out/gen/worker.capnp.c++" -o "$out/worker.o" & a=$!
g++ $flags -c "$out/gen/common.capnp.c++" -o "$out/common.o" & b=$!
wait $a; wait $b
g++ $flags "$here/cpp/client.c++" "$out/worker.o" "$out/common.o" $libs -o "$out/client" & a=$!
g++ $flags "$here/cpp/server.c++" "$out/worker.o" "$out/common.o" $libs -o "$out/server" & b=$!
wait $a; wait $b
echo "built $out/client $out/server"
