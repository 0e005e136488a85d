#!/usr/bin/env bash
# zfs-vm.sh - zdr's real-OpenZFS test lane.
#
# The host kernel of our dev/CI machines cannot load modules, so ZFS cannot run
# there. This script boots a throw-away qemu VM (software emulation, no KVM)
# with Debian 12's 6.1 kernel and the OpenZFS dkms module, and runs one command
# in it. The guest sees the host's whole filesystem read-only (9p) under a
# tmpfs overlay, so every host binary (cargo test binaries, zfs, python) is
# there and every write outside the shared working directory is discarded.
#
#   zfs-vm.sh setup [--zfs 2.3|2.1]  install packages, build zfs.ko, fill cache;
#                                    --zfs 2.1 also builds 2.1 for the guest only
#   zfs-vm.sh run CMD [ARGS...]      run CMD (argv, quote-safe) in a fresh VM
#   zfs-vm.sh sh 'COMMAND LINE'      same, through bash -c
#   zfs-vm.sh check                  in-guest ZFS feature check with timings
#   zfs-vm.sh status                 show what is installed and cached
#
# As a cargo runner (each test binary then runs in its own VM):
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/integration/zfs-vm/zfs-vm.sh run" cargo test
#
# ZDR_VM_ZFS=2.1 runs the guest on OpenZFS 2.1 (the host keeps 2.3).
# `run` exits with the command's exit code; 125 means the VM could not start,
# died, or timed out before the command finished. See README.md for the
# environment variables (ZDR_VM_*).
set -euo pipefail

ME=$(readlink -f -- "${BASH_SOURCE[0]}")
HERE=$(dirname -- "$ME")
PROG=zfs-vm

CACHE=${ZDR_VM_CACHE:-/var/cache/zdr-zfs-vm}
MEM=${ZDR_VM_MEM:-4096M}
CPUS=${ZDR_VM_CPUS:-2}
CPU_MODEL=${ZDR_VM_CPU:-max}
TIMEOUT=${ZDR_VM_TIMEOUT:-1800}
VERBOSE=${ZDR_VM_VERBOSE:-0}
SHOW_TIMING=${ZDR_VM_TIMING:-0}
LOAD_ZFS=${ZDR_VM_LOAD_ZFS:-1}
APT_MIRROR=${ZDR_VM_APT_MIRROR:-http://deb.debian.org/debian}
SOURCES_FILE=/etc/apt/sources.list.d/zdr-zfs-vm-contrib.sources

# Exit code for "the VM, not the command, failed" (like env/chroot/git bisect).
VM_FAILED=125

say() { echo "$PROG: $*" >&2; }
die() { say "error: $*"; exit "$VM_FAILED"; }

usage() {  # usage [EXIT]: the header comment; to stdout for help, else stderr
    if [ "${1:-2}" = 0 ]; then
        sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$ME"
    else
        sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$ME" >&2
    fi
    exit "${1:-2}"
}

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# ---------------------------------------------------------------- kernel ---

# The kernel we boot: the one linux-image-amd64 (Debian 12: 6.1) points at.
# ZDR_VM_KVER overrides (must be installed in /boot with zfs.ko built).
resolve_kver() {
    if [ -n "${ZDR_VM_KVER:-}" ]; then KVER=$ZDR_VM_KVER; return 0; fi
    KVER=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null |
        grep -o 'linux-image-[0-9][^ ,]*-amd64' | head -n 1 | sed 's/^linux-image-//') || true
    [ -n "$KVER" ] || return 1
}

zfs_ko_version() {  # prints the version of zfs.ko built for $KVER, or nothing
    modinfo -k "$KVER" -F version zfs 2>/dev/null | head -n 1 || true
}

# Extract the uncompressed ELF vmlinux from the bzImage once: booting the ELF
# (PVH entry) skips the kernel's self-decompression, which is slow under TCG.
extract_vmlinux() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import lzma, sys
data = open(sys.argv[1], 'rb').read()
magic = b'\xfd7zXZ\x00'
i = data.find(magic)
while i >= 0:
    try:
        out = lzma.LZMADecompressor().decompress(data[i:])
        if out[:4] == b'\x7fELF':
            open(sys.argv[2], 'wb').write(out)
            sys.exit(0)
    except lzma.LZMAError:
        pass
    i = data.find(magic, i + 1)
sys.exit(1)
PY
}

# --------------------------------------------------------------- initramfs ---

# /init: load the 9p/overlay modules, mount host / read-only with a tmpfs
# overlay, switch_root into it and run stage2 there.
write_init() {
    cat <<'EOF'
#!/bin/sh
bb=/bin/busybox
export PATH=/bin
$bb mount -t proc proc /proc; $bb mount -t sysfs sysfs /sys; $bb mount -t devtmpfs dev /dev
fail() {
    echo "zdr-zfs-vm initramfs: $*"; $bb dmesg | $bb tail -n 25
    echo o > /proc/sysrq-trigger; $bb sleep 30
}
for m in $($bb cat /mods/order); do $bb insmod "/mods/$m" || echo "insmod $m failed"; done
o=trans=virtio,version=9p2000.L,msize=512000
$bb mount -t 9p -o ro,$o,cache=loose zdr_root /lower || fail "mounting the host root (9p) failed"
$bb mount -t tmpfs -o size=90%,mode=755 tmpfs /rw || fail "tmpfs for the overlay failed"
$bb mkdir -p /rw/upper /rw/work
# A second OpenZFS series (zfs-vm.sh setup --zfs 2.1) comes as a read-only
# layer over the host root: its userland, libraries, modules and modules.dep.
lower=/lower
$bb mount -t 9p -o ro,$o,cache=loose zdr_zfs /zfslayer 2>/dev/null && lower=/zfslayer:/lower
$bb mount -t overlay -o lowerdir=$lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    fail "overlay mount failed"
$bb mount -t tmpfs -o mode=755 run /newroot/run || fail "tmpfs on /run failed"
$bb mkdir -p /newroot/run/zdr-vm
$bb cp $bb /stage2 /newroot/run/zdr-vm/
$bb umount /proc /sys /dev
exec $bb switch_root /newroot /run/zdr-vm/stage2
EOF
}

# stage2 (in the overlay root): mount the control and work shares, load zfs,
# run the command, record its exit code, power off.
write_stage2() {
    cat <<'EOF'
#!/run/zdr-vm/busybox sh
bb=/run/zdr-vm/busybox
$bb mount -t proc proc /proc; $bb mount -t sysfs sysfs /sys; $bb mount -t devtmpfs dev /dev
$bb mkdir -p /dev/pts /dev/shm; $bb mount -t devpts devpts /dev/pts; $bb mount -t tmpfs shm /dev/shm
$bb ln -sf /proc/self/fd /dev/fd; $bb ln -sf fd/0 /dev/stdin
$bb ln -sf fd/1 /dev/stdout; $bb ln -sf fd/2 /dev/stderr
off() { $bb sync; echo o > /proc/sysrq-trigger; $bb sleep 30; }
o=trans=virtio,version=9p2000.L,msize=512000
C=/run/zdr-vm/ctl
$bb mkdir -p $C
$bb mount -t 9p -o $o zdr_ctl $C || { echo "zdr-zfs-vm: control share mount failed"; off; }
. $C/meta
mark() { echo "$1 $($bb cut -d' ' -f1 /proc/uptime)" >> $C/timing; }
mark stage2
fail() { echo "zdr-zfs-vm (guest): $*" >> $C/stderr; $bb dmesg | $bb tail -n 25 >> $C/stderr; echo 125 > $C/rc; off; }
if [ -n "$ZDR_RW" ]; then
    $bb mkdir -p "$ZDR_RW" && $bb mount -t 9p -o $o,cache=mmap zdr_rw "$ZDR_RW" ||
        fail "mounting the shared work directory $ZDR_RW failed"
fi
$bb hostname zdr-zfs-vm
$bb ip link set lo up
echo "127.0.0.1 localhost zdr-zfs-vm" > /etc/hosts
if [ "$ZDR_LOAD_ZFS" = 1 ]; then
    /sbin/modprobe zfs 2>> $C/stderr || fail "modprobe zfs failed"
    mark zfs-loaded
    # the series asked for is the one loaded, or nothing runs
    if [ -n "$ZDR_ZFS_SERIES" ]; then
        case $($bb cat /sys/module/zfs/version) in
            "$ZDR_ZFS_SERIES".*) ;;
            *) fail "OpenZFS $ZDR_ZFS_SERIES was asked for, but zfs.ko $($bb cat /sys/module/zfs/version) is loaded" ;;
        esac
    fi
fi
/bin/bash $C/cmd.sh < /dev/null >> $C/stdout 2>> $C/stderr
echo $? > $C/rc.tmp && $bb mv $C/rc.tmp $C/rc
mark done
off
EOF
}

# Build (once per kernel and per version of the scripts above) the busybox
# initramfs, and extract vmlinux. Sets KERNEL and INITRD.
prepare_cache() {
    [ -s "/boot/vmlinuz-$KVER" ] || die "kernel /boot/vmlinuz-$KVER is missing; run '$ME setup'"
    mkdir -p "$CACHE" || die "cannot create cache dir $CACHE (set ZDR_VM_CACHE to a writable dir)"
    KERNEL=$CACHE/vmlinux-$KVER
    if [ ! -s "$KERNEL" ]; then
        if extract_vmlinux "/boot/vmlinuz-$KVER" "$KERNEL.tmp.$$"; then
            mv -f "$KERNEL.tmp.$$" "$KERNEL"
        else
            rm -f "$KERNEL.tmp.$$"
            say "warning: could not extract vmlinux from /boot/vmlinuz-$KVER; booting the bzImage (slower)"
            KERNEL=/boot/vmlinuz-$KVER
        fi
    fi
    local rev
    rev=$({ write_init; write_stage2; } | sha256sum | cut -c1-12)
    INITRD=$CACHE/initrd-$KVER-$rev.cpio
    [ -s "$INITRD" ] && return 0

    local bb=/bin/busybox d m   # from busybox-static: the initramfs has no libc
    [ -x "$bb" ] || die "$bb is missing; run '$ME setup' (package busybox-static)"
    d=$(mktemp -d)
    mkdir -p "$d"/{bin,dev,proc,sys,mods,lower,zfslayer,rw,newroot}
    cp "$bb" "$d/bin/busybox"
    ln -s busybox "$d/bin/sh"
    write_init > "$d/init"
    write_stage2 > "$d/stage2"
    chmod 755 "$d/init" "$d/stage2"
    # Debian builds these as modules; "builtin" lines are skipped.
    : > "$d/mods/order"
    for m in virtio_pci 9pnet_virtio 9p overlay; do
        modprobe -S "$KVER" --show-depends "$m" ||
            die "modprobe cannot resolve module $m for $KVER (is linux-image-$KVER installed?)"
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r m; do
        local base
        base=$(basename "$m")
        case $m in
            *.ko.xz) xz -dc "$m" > "$d/mods/${base%.xz}"; base=${base%.xz} ;;
            *.ko.zst) zstd -qdc "$m" > "$d/mods/${base%.zst}"; base=${base%.zst} ;;
            *) cp "$m" "$d/mods/" ;;
        esac
        echo "$base" >> "$d/mods/order"
    done
    (cd "$d" && find . | cpio -o -H newc --quiet) > "$INITRD.tmp.$$" && mv -f "$INITRD.tmp.$$" "$INITRD"
    rm -rf "$d"
    # drop initramfs images of older script versions for this kernel
    find "$CACHE" -maxdepth 1 -name "initrd-$KVER-*.cpio" ! -name "$(basename "$INITRD")" -delete 2>/dev/null || true
}

# ------------------------------------------------------------------ setup ---

zfs_release_for() {  # Debian suite that carries the wanted OpenZFS series
    case $1 in
        2.3) echo bookworm-backports ;;
        2.1) echo bookworm ;;
        *) say "error: unknown --zfs '$1' (use 2.3 or 2.1)"; exit 2 ;;
    esac
}

BASE_PKGS=(qemu-system-x86 busybox-static cpio kmod xz-utils python3
           linux-image-amd64 linux-headers-amd64 dkms gcc make libc6-dev)
ZFS_PKGS=(zfs-dkms zfsutils-linux libzfslinux-dev)

pkg_version() { dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$1" 2>/dev/null | sed -n 's/^ii *//p'; }

# Everything in place for OpenZFS series $1? (cheap: no apt, no network)
setup_is_done() {
    local series=$1 p v
    for p in "${BASE_PKGS[@]}" "${ZFS_PKGS[@]}"; do
        [ -n "$(pkg_version "$p")" ] || return 1
    done
    v=$(pkg_version zfsutils-linux)
    case $v in "$series".*) ;; *) return 1 ;; esac
    resolve_kver || return 1
    case $(zfs_ko_version) in "${v%%-*}"*) ;; *) return 1 ;; esac
    command -v qemu-system-x86_64 >/dev/null || return 1
    [ -s "$CACHE/vmlinux-$KVER" ] || return 1
    compgen -G "$CACHE/initrd-$KVER-*.cpio" >/dev/null || return 1
}

apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "$@" ||
        die "'apt-get $*' failed (see the apt output above; check network access to the Debian mirror and 'dpkg --audit')"
}

# The host's own OpenZFS series; any other one runs from a layer (build_layer).
HOST_SERIES=2.3

do_setup() {
    local series=$HOST_SERIES
    while [ $# -gt 0 ]; do
        case $1 in
            --zfs) [ $# -ge 2 ] || die "--zfs needs a value (2.3 or 2.1)"; series=$2; shift 2 ;;
            --zfs=*) series=${1#--zfs=}; shift ;;
            -h|--help) usage 0 ;;
            *) say "error: unknown setup option '$1'"; usage ;;
        esac
    done
    zfs_release_for "$series" > /dev/null
    setup_host "$HOST_SERIES"
    if [ "$series" != "$HOST_SERIES" ]; then build_layer "$series"; fi
}

setup_host() {
    local series=$1 rel t0
    rel=$(zfs_release_for "$series")
    t0=$(now)

    if setup_is_done "$series"; then
        say "already set up: OpenZFS $(pkg_version zfsutils-linux), kernel $KVER, cache $CACHE ($(elapsed "$t0" "$(now)")s)"
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "setup must run as root (it installs Debian packages)"
    # shellcheck disable=SC1091
    . /etc/os-release
    [ "${VERSION_CODENAME:-}" = bookworm ] ||
        die "setup supports Debian 12 (bookworm) only; this is '${PRETTY_NAME:-unknown}'"
    export DEBIAN_FRONTEND=noninteractive

    # 1. contrib (where Debian keeps OpenZFS) for bookworm, -updates, -backports
    local want
    want=$(cat <<EOF
# Written by zdr's integration/zfs-vm/zfs-vm.sh setup: OpenZFS is in contrib.
Types: deb
URIs: $APT_MIRROR
Suites: bookworm bookworm-updates bookworm-backports
Components: contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
)
    if [ "$(cat "$SOURCES_FILE" 2>/dev/null)" != "$want" ]; then
        say "writing $SOURCES_FILE"
        printf '%s\n' "$want" > "$SOURCES_FILE"
    fi
    # Something is missing, so packages will be fetched: refresh the lists
    # always (a few seconds), stale lists would 404.
    say "apt-get update"
    apt_get update
    # (grep reads all its input: with pipefail, an early-exiting grep -q would
    # turn apt-cache's SIGPIPE into a failure)
    zfs_in_rel() { apt-cache madison zfs-dkms 2>/dev/null | grep -c " $rel/contrib " > /dev/null; }
    zfs_in_rel ||
        die "zfs-dkms is not available from $rel/contrib after apt-get update (check $SOURCES_FILE and the mirror)"

    # 2. qemu, busybox, the 6.1 kernel + headers, and the dkms toolchain
    say "installing ${BASE_PKGS[*]}"
    apt_get install --no-install-recommends "${BASE_PKGS[@]}"
    resolve_kver || die "cannot tell which kernel linux-image-amd64 installed (dpkg-query linux-image-amd64)"
    [ -d "/lib/modules/$KVER/build" ] ||
        die "headers for $KVER are missing (/lib/modules/$KVER/build); try 'apt-get install linux-headers-$KVER'"

    # 3. OpenZFS $series from $rel; the dkms build of zfs.ko (5-9 min) runs here
    local sel=() p
    for p in "${ZFS_PKGS[@]}"; do sel+=("$p/$rel"); done
    say "installing OpenZFS $series from $rel: ${sel[*]} (dkms builds zfs.ko: 5-9 min on 2 cores)"
    apt_get install --no-install-recommends --allow-downgrades "${sel[@]}"
    local v
    v=$(pkg_version zfsutils-linux)
    case $v in "$series".*) ;; *) die "zfsutils-linux is at '$v' after install, expected $series.x" ;; esac
    case $(zfs_ko_version) in
        "${v%%-*}"*) ;;
        *)  say "zfs.ko for $KVER missing or stale ($(zfs_ko_version)); building it with dkms"
            dkms autoinstall -k "$KVER" || die "'dkms autoinstall -k $KVER' failed; see /var/lib/dkms/zfs/*/build/make.log"
            case $(zfs_ko_version) in
                "${v%%-*}"*) ;;
                *) die "zfs.ko for $KVER is '$(zfs_ko_version)', expected ${v%%-*}; see 'dkms status' and /var/lib/dkms/zfs/*/build/make.log" ;;
            esac ;;
    esac

    # 4. cache the uncompressed kernel and the initramfs
    prepare_cache
    say "setup done: OpenZFS $v (zfs.ko $(zfs_ko_version)), kernel $KVER, cache $CACHE ($(elapsed "$t0" "$(now)")s)"
}

# ------------------------------------------------------- a second series ---

layer_dir() { echo "$CACHE/openzfs-$1-$KVER"; }

# build_layer SERIES: OpenZFS SERIES for the guest only, without touching the
# host's packages: its userland and libraries unpacked from Debian's .debs, and
# its modules built from zfs-dkms's source for $KVER, laid out for merged /usr,
# with the modules.dep that depmod makes for them. The guest's overlay puts it
# over the host root (see write_init), so 2.1 and 2.3 run in one CI run.
build_layer() {
    local series=$1 rel ver dir work t0 p
    t0=$(now)
    rel=$(zfs_release_for "$series")
    resolve_kver || die "no Debian kernel found; run '$ME setup' first"
    dir=$(layer_dir "$series")
    if [ -s "$dir/ready" ]; then
        say "already built: $(cat "$dir/ready") in $dir ($(elapsed "$t0" "$(now)")s)"
        return 0
    fi
    [ -d "/lib/modules/$KVER/build" ] || die "headers for $KVER are missing (/lib/modules/$KVER/build); run '$ME setup'"
    ver=$(apt-cache madison zfsutils-linux | awk -v r=" $rel/contrib " 'index($0, r) { print $3; exit }')
    [ -n "$ver" ] || die "no zfsutils-linux in $rel/contrib (run 'apt-get update'; see $SOURCES_FILE)"
    # zfsutils-linux names its libraries' packages, pinned to its own version
    local pkgs=(zfs-dkms zfsutils-linux)
    for p in $(apt-cache show "zfsutils-linux=$ver" | sed -n 's/^Depends: //p' | tr ',' '\n' |
               sed -n "s/^ *\([a-z0-9.+-]*\) (= $ver)\$/\1/p"); do
        pkgs+=("$p")
    done
    work=$(mktemp -d /var/tmp/zdr-zfs-layer.XXXXXX)
    chmod 755 "$work"   # apt-get download runs as _apt where it can
    say "OpenZFS $ver for the guest: downloading ${pkgs[*]}"
    (cd "$work" && apt-get download -q "${pkgs[@]/%/=$ver}" > "$work/download.log" 2>&1) ||
        die "apt-get download of ${pkgs[*]} at $ver failed: $(tail -n 3 "$work/download.log")"
    mkdir -p "$work/pkg" "$work/dkms" "$work/root/usr"
    for p in "$work"/*.deb; do
        case $(basename "$p") in
            zfs-dkms_*) dpkg-deb -x "$p" "$work/dkms" ;;
            *) dpkg-deb -x "$p" "$work/pkg" ;;
        esac
    done
    # merged /usr: the host's /bin, /sbin and /lib are links into /usr, and a
    # directory in the layer would hide the link's whole target
    for p in bin sbin lib; do
        if [ -d "$work/pkg/$p" ]; then
            mkdir -p "$work/root/usr/$p" && cp -a "$work/pkg/$p/." "$work/root/usr/$p/"
        fi
    done
    cp -a "$work/pkg/usr/." "$work/root/usr/"
    [ -d "$work/pkg/etc" ] && cp -a "$work/pkg/etc" "$work/root/"

    local src
    src=$(echo "$work"/dkms/usr/src/zfs-*)
    [ -x "$src/configure" ] || die "no configure script in the zfs-dkms source ($src)"
    say "building OpenZFS $ver modules for $KVER (configure + make, ~10 min on 2 cores; log in $work/build.log)"
    (cd "$src" && ./configure --prefix=/usr --with-config=kernel \
            --with-linux="/usr/src/linux-headers-${KVER%-amd64}-common" \
            --with-linux-obj="/lib/modules/$KVER/build" && make -j"$(nproc)") > "$work/build.log" 2>&1 ||
        die "building the OpenZFS $ver modules failed: $(tail -n 5 "$work/build.log") (whole log: $work/build.log)"
    local mods=$work/root/usr/lib/modules/$KVER/updates/dkms
    mkdir -p "$mods"
    find "$src/module" -name '*.ko' -exec cp {} "$mods/" \;
    strip --strip-debug "$mods"/*.ko
    [ -s "$mods/zfs.ko" ] && [ -s "$mods/spl.ko" ] || die "the build made no zfs.ko and spl.ko (see $work/build.log)"
    # modules.dep for the host's modules with this series' zfs in place of the host's
    local tree=$work/depmod
    mkdir -p "$tree/lib/modules"
    cp -a "/lib/modules/$KVER" "$tree/lib/modules/"
    rm -f "$tree/lib/modules/$KVER/updates/dkms/"*.ko "$tree/lib/modules/$KVER"/modules.*
    cp "$mods"/*.ko "$tree/lib/modules/$KVER/updates/dkms/"
    cp "/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$tree/lib/modules/$KVER/"
    depmod -b "$tree" "$KVER" || die "depmod for the OpenZFS $ver layer failed"
    cp "$tree/lib/modules/$KVER"/modules.* "$work/root/usr/lib/modules/$KVER/"

    rm -rf -- "$dir"
    mkdir -p "$dir"
    mv "$work/root" "$dir/root"
    echo "OpenZFS $ver (zfs.ko $(modinfo -F version "$dir/root/usr/lib/modules/$KVER/updates/dkms/zfs.ko")), kernel $KVER" > "$dir/ready"
    rm -rf -- "$work"
    say "built $(cat "$dir/ready") in $dir ($(elapsed "$t0" "$(now)")s)"
}

# -------------------------------------------------------------------- run ---

# single-quote a string for a POSIX shell (busybox sh sources meta)
sq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

# Guest PATH: the caller's, plus cargo's and pip's usual bin dirs.
guest_path() {
    local p=${PATH:-} d extra=(/root/.cargo/bin /root/.local/bin /usr/local/sbin /usr/local/bin
                               /usr/sbin /usr/bin /sbin /bin)
    # where pip puts console scripts, for Debian's python3 and the PATH's one
    local py
    for py in /usr/bin/python3 "$(command -v python3 || true)"; do
        [ -n "$py" ] && [ -x "$py" ] || continue
        extra+=("$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)")
    done
    if [ -n "${HOME:-}" ] && [ "$HOME" != /root ]; then extra+=("$HOME/.cargo/bin" "$HOME/.local/bin"); fi
    for d in "${extra[@]}"; do
        [ -n "$d" ] || continue
        case ":$p:" in *":$d:"*) ;; *) p=${p:+$p:}$d ;; esac
    done
    printf '%s' "$p"
}

# vm_exec MODE ARGS...: MODE argv (exec ARGS) or shell (bash -c ARGS[0]).
vm_exec() {
    local mode=$1; shift
    resolve_kver || die "no Debian kernel found (linux-image-amd64 not installed); run '$ME setup'"
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found; run '$ME setup'"
    if [ "$LOAD_ZFS" = 1 ] && [ -z "$(zfs_ko_version)" ]; then
        die "no zfs.ko for kernel $KVER; run '$ME setup'"
    fi
    case $TIMEOUT in ''|*[!0-9]*) die "ZDR_VM_TIMEOUT must be whole seconds, not '$TIMEOUT'" ;; esac
    local series=${ZDR_VM_ZFS:-} layer=
    if [ -n "$series" ]; then
        zfs_release_for "$series" > /dev/null
        if [ "$series" != "$HOST_SERIES" ]; then
            layer=$(layer_dir "$series")
            [ -s "$layer/ready" ] ||
                die "OpenZFS $series for the guest is not built ($layer); run '$ME setup --zfs $series'"
        fi
    fi
    prepare_cache

    local rw=${ZDR_VM_RW-$PWD}
    [ "$rw" = none ] && rw=
    if [ -n "$rw" ]; then
        rw=$(realpath -- "$rw") && [ -d "$rw" ] || die "shared work directory '$rw' is not a directory (ZDR_VM_RW)"
        [ "$rw" != / ] || die "refusing to share / read-write: cd to a project dir, or set ZDR_VM_RW=DIR or none"
    fi

    RUN=$(mktemp -d "${ZDR_VM_RUNDIR:-/var/tmp}/zdr-zfs-vm.XXXXXX") || die "mktemp failed"
    QPID=
    trap 'vm_cleanup' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    {
        printf 'ZDR_RW=%s\n' "$(sq "$rw")"
        printf 'ZDR_LOAD_ZFS=%s\n' "$(sq "$LOAD_ZFS")"
        printf 'ZDR_ZFS_SERIES=%s\n' "$(sq "$series")"
    } > "$RUN/meta"
    {
        echo '# generated by zfs-vm.sh: the command and its environment'
        printf 'export PATH=%q\n' "$(guest_path)"
        printf 'export HOME=%q\n' "${HOME:-/root}"
        echo 'export TERM=dumb LANG=C.UTF-8 ZDR_IN_ZFS_VM=1'
        local v
        for v in USER LOGNAME TZ TMPDIR LD_LIBRARY_PATH \
                 $(compgen -e | grep -E '^(CARGO|RUST|NEXTEST|PYENV|ZDR_)' | grep -v '^ZDR_VM_') \
                 ${ZDR_VM_ENV:-}; do
            [ -n "${!v+x}" ] && printf 'export %s=%q\n' "$v" "${!v}"
        done
        printf 'cd -- %q || { echo "zfs-vm: cannot cd to %q in the guest" >&2; exit 125; }\n' "$PWD" "$PWD"
        echo ': > /run/zdr-vm/ctl/started'
        if [ "$mode" = shell ]; then
            printf 'exec /bin/bash -c %q\n' "$1"
        else
            printf 'exec'; printf ' %q' "$@"; printf '\n'
        fi
    } > "$RUN/cmd.sh"
    : > "$RUN/stdout"; : > "$RUN/stderr"; : > "$RUN/console.log"; : > "$RUN/timing"

    # shellcheck disable=SC2054  # commas are qemu option syntax
    local args=(-nodefaults -no-user-config -display none -no-reboot
        -machine q35 -accel tcg -cpu "$CPU_MODEL" -smp "$CPUS" -m "$MEM"
        -kernel "$KERNEL" -initrd "$INITRD"
        -append "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic"
        -serial "file:$RUN/console.log"
        -fsdev local,id=root,path=/,security_model=none,readonly=on,multidevs=remap
        -device virtio-9p-pci,fsdev=root,mount_tag=zdr_root
        -fsdev "local,id=ctl,path=${RUN//,/,,},security_model=none"
        -device virtio-9p-pci,fsdev=ctl,mount_tag=zdr_ctl)
    if [ -n "$rw" ]; then
        # shellcheck disable=SC2054
        args+=(-fsdev "local,id=rw,path=${rw//,/,,},security_model=none"
               -device virtio-9p-pci,fsdev=rw,mount_tag=zdr_rw)
    fi

    if [ -n "$layer" ]; then
        # shellcheck disable=SC2054
        args+=(-fsdev "local,id=zfs,path=${layer//,/,,}/root,security_model=none,readonly=on,multidevs=remap"
               -device virtio-9p-pci,fsdev=zfs,mount_tag=zdr_zfs)
    fi

    local t0 qrc=0
    t0=$(now)
    timeout -s KILL "$TIMEOUT" qemu-system-x86_64 "${args[@]}" < /dev/null > "$RUN/qemu.log" 2>&1 &
    QPID=$!
    tail -s 0.2 -n +1 -f --pid="$QPID" "$RUN/stdout" &
    tail -s 0.2 -n +1 -f --pid="$QPID" "$RUN/stderr" >&2 &
    if [ "$VERBOSE" = 1 ]; then tail -s 0.2 -n +1 -f --pid="$QPID" "$RUN/console.log" >&2 & fi
    { wait "$QPID"; } 2>/dev/null || qrc=$?   # (no "Killed" job notice on timeout)
    QPID=
    wait  # the tails, which end (after a last read) once qemu is gone
    local t_end
    t_end=$(now)

    if [ "$VERBOSE" = 1 ] || [ "$SHOW_TIMING" = 1 ]; then
        local ts tr line
        ts=$(stat -c %.6Y "$RUN/started" 2>/dev/null || true)
        tr=$(stat -c %.6Y "$RUN/rc" 2>/dev/null || true)
        line="timing: total $(elapsed "$t0" "$t_end")s"
        if [ -n "$ts" ]; then line+=", boot to command $(elapsed "$t0" "$ts")s"; fi
        if [ -n "$ts" ] && [ -n "$tr" ]; then line+=", command $(elapsed "$ts" "$tr")s"; fi
        if [ -n "$tr" ]; then line+=", shutdown $(elapsed "$tr" "$t_end")s"; fi
        say "$line"
        if [ -s "$RUN/timing" ]; then say "guest uptime marks: $(tr '\n' ' ' < "$RUN/timing")"; fi
    fi
    if [ -s "$RUN/rc" ]; then
        RC=$(cat "$RUN/rc")
        return 0
    fi
    if [ "$qrc" = 137 ]; then
        say "error: TIMEOUT: the VM was killed after ${TIMEOUT}s (raise ZDR_VM_TIMEOUT)"
    else
        say "error: the VM ended without the command's exit code (qemu exit $qrc)"
    fi
    if [ -s "$RUN/qemu.log" ]; then say "qemu said:"; tail -n 20 "$RUN/qemu.log" >&2; fi
    if [ -s "$RUN/console.log" ]; then
        say "guest console (last 30 lines; ZDR_VM_VERBOSE=1 streams all of it):"
        tail -n 30 "$RUN/console.log" >&2
    else
        say "the guest console printed nothing (ZDR_VM_VERBOSE=1 streams it)"
    fi
    RC=$VM_FAILED
}

vm_cleanup() {
    if [ -n "${QPID:-}" ]; then kill "$QPID" 2>/dev/null || true; wait "$QPID" 2>/dev/null || true; fi
    if [ -n "${RUN:-}" ]; then rm -rf -- "$RUN"; fi
}

# ------------------------------------------------------------------ check ---

do_check() {
    local guest=$HERE/guest-check.sh
    [ -r "$guest" ] || die "missing $guest (it ships next to this script)"
    local t0 RC
    t0=$(now)
    SHOW_TIMING=1
    ZDR_VM_RW=none vm_exec argv /bin/bash "$guest"
    say "check: $([ "$RC" = 0 ] && echo PASSED || echo "FAILED (exit $RC)") in $(elapsed "$t0" "$(now)")s wall"
    return "$RC"
}

do_status() {
    resolve_kver || KVER="(none: linux-image-amd64 not installed)"
    echo "kernel:        $KVER"
    echo "zfs.ko:        $(zfs_ko_version)"
    echo "zfsutils:      $(pkg_version zfsutils-linux)"
    echo "qemu:          $(pkg_version qemu-system-x86)"
    echo "cache:         $CACHE"
    ls -la "$CACHE" 2>/dev/null | sed 1d | sed 's/^/  /'
    local r
    for r in "$CACHE"/openzfs-*/ready; do
        [ -s "$r" ] && echo "guest layer:   $(cat "$r") (ZDR_VM_ZFS=$(basename "$(dirname "$r")" | cut -d- -f2))"
    done
    setup_is_done "$(pkg_version zfsutils-linux | cut -d. -f1,2)" 2>/dev/null &&
        echo "state:         ready" || echo "state:         NOT ready (run '$ME setup')"
}

# ------------------------------------------------------------------- main ---

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
    setup) do_setup "$@" ;;
    run)
        [ "${1:-}" = -- ] && shift
        [ $# -ge 1 ] || { say "error: 'run' needs a command"; usage; }
        RC=$VM_FAILED
        vm_exec argv "$@"
        exit "$RC" ;;
    sh)
        [ $# -eq 1 ] || { say "error: 'sh' takes exactly one command-line string"; usage; }
        RC=$VM_FAILED
        vm_exec shell "$1"
        exit "$RC" ;;
    check) do_check ;;
    status) do_status ;;
    -h|--help|help) usage 0 ;;
    *) say "error: unknown subcommand '$cmd'"; usage ;;
esac
