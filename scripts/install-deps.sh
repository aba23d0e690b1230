#!/usr/bin/env bash
# Installs everything selfnode needs on a fresh Debian 12 machine, as root:
# Debian packages, then the pinned upstream bundle (fixtures/build-bundle.sh,
# cached under /var/cache/selfnode so a reused machine skips the Go build),
# then a self-check that names the package behind anything still missing.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every Debian package the build, the tests and the runtime use, and why.
# (A package left out here is how the last fresh-machine failure happened:
# protoc without libprotobuf-dev has no google/protobuf/*.proto.)
packages=(
  protobuf-compiler   # protoc, for the gRPC crates' build scripts (etcd-client, containerd-client)
  libprotobuf-dev     # google/protobuf/*.proto, imported by etcd's and containerd's protos
  gcc libc6-dev       # linking the static binary; pause.c in the bundle build
  openssl             # the PKI tests cross-check certificates with openssl
  runc                # the OCI runtime containerd uses
  containernetworking-plugins  # bridge, host-local, loopback, portmap
  iproute2            # ip: tests and the agent's network checks
  iptables conntrack  # kube-proxy's tools, copied into its image from the host
  kmod                # modprobe br_netfilter
  file                # the bundle build checks that binaries are static
  util-linux          # mount, umount, unshare, nsenter, flock, findmnt
  procps              # pgrep (bench/recovery.sh finds a host's shims)
  curl ca-certificates  # tests call the API servers' health endpoints
  gzip                # image layers
  # Appliance images (selfnode image build) and their boot tests:
  xorriso             # the hybrid ISO (BIOS, also when written to a USB stick)
  isolinux syslinux syslinux-common  # BIOS boot loaders: ISO, and the raw image's FAT partition
  mtools dosfstools   # the raw image's FAT boot partition, written without mounting
  fdisk               # sfdisk: the raw image's GPT
  e2fsprogs           # mke2fs, copied into the image: formats the data disk on first boot; debugfs: bench/appliance.sh reads the guest's logs
  qemu-system-x86     # boots the images in the tests (software emulation, no KVM)
)
need=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "[deps] installing Debian packages: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
command -v go >/dev/null || { echo "error: go not found; install Go >= 1.26 first" >&2; exit 1; }

# Self-check: each tool that the build, tests or runtime call, with the
# package that provides it, so a missing one fails here and names it.
fail=0
check() { # check PACKAGE COMMAND...
  local pkg=$1; shift
  if ! "$@" >/dev/null 2>&1; then
    echo "error: self-check failed: '$*' (Debian package $pkg); run: apt-get install $pkg" >&2
    fail=1
  fi
}
for pair in protoc:protobuf-compiler openssl:openssl runc:runc ip:iproute2 iptables:iptables \
  conntrack:conntrack modprobe:kmod file:file unshare:util-linux nsenter:util-linux mount:util-linux pgrep:procps curl:curl gcc:gcc gzip:gzip; do
  check "${pair#*:}" command -v "${pair%%:*}"
done
for pair in xorriso:xorriso mcopy:mtools mkfs.fat:dosfstools sfdisk:fdisk syslinux:syslinux \
  mke2fs:e2fsprogs qemu-system-x86_64:qemu-system-x86 depmod:kmod; do
  check "${pair#*:}" command -v "${pair%%:*}"
done
for f in /usr/lib/ISOLINUX/isolinux.bin /usr/lib/ISOLINUX/isohdpfx.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 /usr/lib/syslinux/mbr/gptmbr.bin; do
  check syslinux-common test -f "$f"
done
for plugin in bridge host-local loopback portmap; do
  check containernetworking-plugins test -x "/usr/lib/cni/$plugin"
done
# protoc must find the well-known types that etcd's protos import.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nmessage M { google.protobuf.FileDescriptorProto d = 1; }\n' >"$probe/p.proto"
check libprotobuf-dev protoc -I"$probe" --descriptor_set_out="$probe/out" "$probe/p.proto"
((fail == 0)) || exit 1

# The upstream components at the versions pinned in versions.env.
bash fixtures/build-bundle.sh >&2

# kube-bench, for the CIS benchmark test (node/tests/cis_benchmark.rs): a
# test tool, not part of the bundle; pinned in fixtures/kube-bench.env and
# cached in /var/cache/selfnode/tools/kube-bench-<version>.
bash fixtures/build-kube-bench.sh >&2

# The appliance's default kernel: Debian's linux-image-amd64, fetched like
# any other package (the mirror serves only its current version, so it is
# not pinned), unpacked under /var/cache/selfnode/kernels/<package> with the
# module index depmod writes (the package's postinst would), and linked as
# /var/cache/selfnode/kernel. 'selfnode image build' takes it by default.
bash fixtures/fetch-kernel.sh >&2
