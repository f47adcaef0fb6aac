#!/usr/bin/env bash
# The build-farm flow for the agent sandbox, end to end:
#   1. build the VM spec (its closure is kernel + initrd + root image),
#   2. sign it and push the closure to the binary cache the workers trust,
#   3. ask a worker to boot it; the worker pulls whatever it lacks from the cache.
#
# Usage: build-and-run.sh [CACHE_URL]
#   CACHE_URL / PCR_CACHE_URL  where to push (default: a local file:// cache)
#   PCR_SIGNING_KEY            secret key file (nix-store --generate-binary-cache-key); workers check signatures
#   PCR_WORKER                 worker address for pcr-worker-test (default /run/procurator/worker.sock)
#   API_KEY_FILE               file holding the model API key, passed as the secret anthropic-api-key
#   BUILD_ONLY=1               stop after pushing (the build machine is not a worker)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-${PCR_CACHE_URL:-file:///var/cache/procurator-cache?compression=zstd}}
nix=(nix --extra-experimental-features "nix-command flakes")

echo "==> nix build $here/agent#vmSpecJson"
spec=$("${nix[@]}" build --no-link --print-out-paths "$here/agent#vmSpecJson")
echo "spec file: $spec"
cat "$spec"
echo

# Workers only accept paths signed by a key they trust (--trusted-key / PCR_TRUSTED_KEYS):
# secret-key= makes the cache store sign each path as it is uploaded.
push_url=$cache
if [[ -n ${PCR_SIGNING_KEY:-} ]]; then
  if [[ $push_url == *"?"* ]]; then push_url+="&secret-key=$PCR_SIGNING_KEY"; else push_url+="?secret-key=$PCR_SIGNING_KEY"; fi
fi

echo "==> nix copy --to $cache (the spec file and everything it refers to)"
"${nix[@]}" copy --to "$push_url" "$spec"
"${nix[@]}" path-info --recursive --size --human-readable "$spec"

if [[ ${BUILD_ONLY:-} == 1 ]]; then
  echo "built and pushed; boot it on a worker with: pcr-worker-test create-vm --spec-file $spec"
  exit 0
fi

echo "==> pcr-worker-test create-vm --spec-file $spec"
args=(create-vm --spec-file "$spec" --ttl 3600)
if [[ -n ${API_KEY_FILE:-} ]]; then args+=(--secret "anthropic-api-key=@$API_KEY_FILE"); fi
id=$(pcr-worker-test "${args[@]}")
echo "vm: $id"
echo "==> console (until the agent powers the VM off)"
pcr-worker-test logs --follow "$id"
