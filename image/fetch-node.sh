#!/bin/bash
# Installs into PREFIX (bin/node, bin/npm) the Node that package-lock.json pins, from the
# npm registry, and the npm that release bundles (NPM_VERSION). Run in the Dockerfile's
# build stage from the directory holding package-lock.json.
#
# The lockfile pins the npm package `node` by version and integrity hash. That package
# holds no binary: at install time it runs `npm install node-linux-<arch>@<its version>`,
# so the lockfile has no hash for the binary itself. We check the `node` package
# against the lockfile's hash and that it pins that same version, then check the arch
# package against the integrity the registry publishes for that exact version (what npm
# does when it installs it).
set -euo pipefail
prefix=${1:?usage: fetch-node.sh PREFIX}
registry=${NPM_REGISTRY:-https://registry.npmjs.org}
npm_version=${NPM_VERSION:-11.19.0}
work=$(mktemp -d)
# The Dockerfile mounts a CA bundle here when the build needs one (--secret id=build-ca).
[ -f /run/secrets/build-ca ] && export CURL_CA_BUNDLE=/run/secrets/build-ca
trap 'rm -rf "$work"' EXIT

# Downloads TARBALL into FILE and fails unless it has the sha512 INTEGRITY (npm's SRI form).
fetch_verified() {
  local tarball=$1 integrity=$2 file=$3
  [[ $integrity == sha512-* ]] || { echo "unsupported integrity for $tarball: $integrity" >&2; return 1; }
  curl -fsSL --retry 3 -o "$file" "$tarball"
  local want got
  want=$(base64 -d <<<"${integrity#sha512-}" | od -An -v -tx1 | tr -d ' \n')
  got=$(sha512sum "$file" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "integrity mismatch for $tarball: want $integrity" >&2; return 1; }
}

# Fetches NAME@VERSION (checked against the registry's own integrity) and unpacks it into DIR.
install_package() {
  local name=$1 version=$2 dir=$3 meta
  meta=$(curl -fsSL --retry 3 "$registry/$name/$version")
  fetch_verified "$(jq -er .dist.tarball <<<"$meta")" "$(jq -er .dist.integrity <<<"$meta")" "$work/$name.tgz"
  mkdir -p "$dir"
  tar -xzf "$work/$name.tgz" -C "$dir" --strip-components=1 --no-same-owner
}

version=$(jq -er '.packages["node_modules/node"].version' package-lock.json)
lock_integrity=$(jq -er '.packages["node_modules/node"].integrity' package-lock.json)
fetch_verified "$registry/node/-/node-$version.tgz" "$lock_integrity" "$work/node-wrapper.tgz"
tar -xzf "$work/node-wrapper.tgz" -C "$work" package/installArchSpecificPackage.js
grep -q "(\"$version\"," "$work/package/installArchSpecificPackage.js" \
  || { echo "the node $version package does not install node-<platform>-<arch>@$version" >&2; exit 1; }

case $(dpkg --print-architecture) in
  amd64) arch=x64 ;;
  arm64) arch=arm64 ;;
  ppc64el) arch=ppc64 ;;
  s390x) arch=s390x ;;
  *) echo "no node-linux package for $(dpkg --print-architecture)" >&2; exit 1 ;;
esac
install_package "node-linux-$arch" "$version" "$work/node-linux"
mkdir -p "$prefix/bin"
# The release binary carries its symbol table (126.6 MB; 108.5 MB stripped, 44.6 -> 40.3 MB
# gzipped). Only native debuggers read it; JavaScript stack traces do not.
strip -o "$prefix/bin/node" "$work/node-linux/bin/node"
[ "$("$prefix/bin/node" --version)" = "v$version" ] || { echo "node --version is not v$version" >&2; exit 1; }

install_package npm "$npm_version" "$prefix/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$prefix/bin/npm"
echo "node v$version (node-linux-$arch), npm $("$prefix/bin/node" "$prefix/bin/npm" --version)"
