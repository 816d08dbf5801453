#!/usr/bin/env bash
# Writes a real image's layers for `make bench` into $1/layers (kept between
# runs): a debootstrapped Debian bookworm (minbase), python3.11 installed
# over it with apt (the upper directory of an overlay mount), and Go's
# sources under usr/local/go, each a gzip'd tar as GNU tar writes it with
# xattrs. Needs root, debootstrap and Debian's mirror; prints why not and
# exits 1 otherwise.
set -euo pipefail
dir=${1:?usage: realimage.sh DIR}
if compgen -G "$dir/layers/*.tar.gz" >/dev/null; then exit 0; fi
for tool in debootstrap tar gzip; do
  command -v "$tool" >/dev/null || { echo "realimage: $tool is not installed (apt-get install debootstrap): no real image" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "realimage: needs root (debootstrap, overlay mount): no real image" >&2; exit 1; }
mkdir -p "$dir"
work=$(mktemp -d "$dir/work.XXXXXX")
trap 'umount -q "$work/merged/proc" 2>/dev/null || true; umount -q "$work/merged" 2>/dev/null || true; rm -rf "$work"' EXIT
debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
  { echo "realimage: debootstrap failed (see $work/debootstrap.log)" >&2; tail -5 "$work/debootstrap.log" >&2; exit 1; }
rm -f "$work"/rootfs/var/cache/apt/archives/*.deb
mkdir -p "$work/upper" "$work/ovl" "$work/merged"
mount -t overlay overlay -o "lowerdir=$work/rootfs,upperdir=$work/upper,workdir=$work/ovl" "$work/merged"
mount --bind /proc "$work/merged/proc"
cp /etc/resolv.conf "$work/merged/etc/resolv.conf" 2>/dev/null || true
chroot "$work/merged" bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 >/dev/null && apt-get clean'
umount "$work/merged/proc"
umount "$work/merged"
find "$work/upper" -type c -delete # overlay whiteouts of what apt-get clean removed
mkdir -p "$dir/layers.tmp"
tar --xattrs -C "$work/rootfs" -cf - . | gzip -9 >"$dir/layers.tmp/1-debian.tar.gz"
tar --xattrs -C "$work/upper" -cf - . | gzip -9 >"$dir/layers.tmp/2-python.tar.gz"
goroot=$(${GO:-go} env GOROOT)
tar --xattrs -C "$goroot" --transform 's,^\./,usr/local/go/,' -cf - ./src | gzip -9 >"$dir/layers.tmp/3-gosrc.tar.gz"
rm -rf "$dir/layers"
mv "$dir/layers.tmp" "$dir/layers"
