#!/bin/bash
# Assembles OUT, the runtime image's file tree apart from Node and the application: the
# agent's data-plane tools from this (Debian) stage with exactly the shared libraries,
# xtables extensions and data files they load, and the libraries of the other ELF
# files named (Node, which goes into a layer of its own); users root and nonroot (65532); CA
# certificates; and, for image scanners, the dpkg records and copyright files of the
# packages the files came from. No shell, no package manager, no docs.
set -euo pipefail
out=${1:?usage: collect-rootfs.sh OUT [ELF...]}
shift
# The multiarch library directory, e.g. /usr/lib/x86_64-linux-gnu: where xtables lives.
libdir=$(dirname "$(readlink -f /usr/lib/*/xtables)")

# Debian's merged /usr: /bin, /sbin and /lib* are links into /usr.
mkdir -p "$out"/usr/{bin,sbin,local/bin} "$out$libdir" "$out"/{etc,proc,sys,dev,run,root,home/nonroot}
ln -s usr/bin "$out/bin"
ln -s usr/sbin "$out/sbin"
ln -s usr/lib "$out/lib"
[ -d /usr/lib64 ] && { mkdir -p "$out/usr/lib64"; ln -s usr/lib64 "$out/lib64"; }
install -d -m 1777 "$out/tmp"
chown 65532:65532 "$out/home/nonroot"
chmod 700 "$out/root"

copied=()
# Copies a file to the same canonical (merged-/usr) path under $out; symlinks are kept as
# links and their targets copied too.
copy() {
  local src=$1 dir name
  while :; do
    name=${src##*/}
    dir=$(readlink -f "${src%/*}")
    if [ ! -e "$out$dir/$name" ] && [ ! -L "$out$dir/$name" ]; then
      mkdir -p "$out$dir"
      cp -a "$src" "$out$dir/$name"
      copied+=("$dir/$name")
    fi
    [ -L "$src" ] || break
    src=$(readlink -f "$src")
  done
}

# iptables in nft mode: every name points at xtables-nft-multi directly (Debian's
# alternatives would need /etc/alternatives and update-alternatives).
copy /usr/sbin/xtables-nft-multi
for t in iptables ip6tables; do
  for v in "" -save -restore; do ln -s xtables-nft-multi "$out/usr/sbin/$t$v"; done
done
binaries=(/usr/sbin/xtables-nft-multi /usr/sbin/nft /usr/sbin/ipset /usr/sbin/ipvsadm /usr/sbin/conntrack "$(readlink -f /usr/bin/ip)")
for b in "${binaries[@]}"; do copy "$b"; done
[ -e "$out/usr/sbin/ip" ] || ln -s ../bin/ip "$out/usr/sbin/ip"
# iptables loads its match and target extensions (libxt_*.so, ...) at run time.
cp -a "$libdir/xtables" "$out$libdir/"
copied+=("$libdir"/xtables/*)

# The shared libraries all of them need, and those of the other ELF files named (one
# ldd for all: a fork per file costs minutes on a busy machine).
for lib in $(ldd "${binaries[@]}" "$libdir"/xtables/*.so "$@" | awk '/=> \// {print $3} /^\t\// {print $1}' | sort -u); do
  copy "$lib"
done

# Data files: protocol and service names (iptables, nft, conntrack), ethertypes,
# iproute2's tables, CA certificates.
for f in /etc/protocols /etc/services /etc/ethertypes /etc/ssl/certs/ca-certificates.crt; do copy "$f"; done
cp -a /etc/iproute2 "$out/etc/"
copied+=($(find /etc/iproute2 -type f))
[ -d /usr/share/iproute2 ] && { mkdir -p "$out/usr/share"; cp -a /usr/share/iproute2 "$out/usr/share/"; }

cat >"$out/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin
EOF
cat >"$out/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
cat >"$out/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
networks: files
protocols: files
services: files
ethers: files
EOF
cp /etc/os-release "$out/etc/os-release" 2>/dev/null || cp /usr/lib/os-release "$out/etc/os-release"

# Which packages the copied files came from (dpkg records some under /lib, /bin, /sbin):
# one status record each, as distroless images have, and the package's copyright.
mkdir -p "$out/var/lib/dpkg/status.d"
aliases=()
for f in "${copied[@]}"; do
  aliases+=("$f")
  case $f in /usr/lib/* | /usr/bin/* | /usr/sbin/*) aliases+=("${f#/usr}") ;; esac
done
packages=$({ dpkg-query -S "${aliases[@]}" 2>/dev/null || true; } | sed -n 's|: /.*||p' | tr ',' '\n' | sed 's/^ *//; s/:.*//' | sort -u)
for name in $packages; do
  dpkg-query -s "$name" | grep -v '^Conffiles:\|^ /' >"$out/var/lib/dpkg/status.d/$name"
  if [ -f "/usr/share/doc/$name/copyright" ]; then
    mkdir -p "$out/usr/share/doc/$name"
    cp "/usr/share/doc/$name/copyright" "$out/usr/share/doc/$name/"
  fi
done
echo "rootfs: $(du -sh "$out" | cut -f1), packages: $(ls "$out/var/lib/dpkg/status.d" | tr '\n' ' ')"
