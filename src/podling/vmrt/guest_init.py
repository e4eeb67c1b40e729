"""The guest's /init (PID 1, busybox sh), kept as text here and written into the initramfs.

Contract with the host (files in the `vmrt-cfg` 9p share, written by guest.py):
- `guest.env`: VMRT_HOSTNAME, VMRT_IP (addr/prefix, may be empty), VMRT_GW, VMRT_MTU,
  VMRT_ROOT_RO (1 for a read-only rootfs)
- `mounts.sh`: sourced after the rootfs is at /ct; mounts the spec's mounts under /ct
- `run.sh`: run by the guest's busybox sh; execs the process in /ct (see guest.py)
- the guest writes `exit` (the process's exit code, 128+n for signal n) and then stops
  the machine through qemu's isa-debug-exit port (0xf4)
Ports (virtio-serial, by name): `stdout`, `stderr`, `agent` (see agent.py for its lines).
"""

INIT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /cfg /ct /shares
mount -t tmpfs tmpfs /run

finish() {
    echo "$1" > /cfg/exit.tmp && mv /cfg/exit.tmp /cfg/exit
    sync
    printf '\000' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    poweroff -f
}

fail() {
    echo "podling-vmrt guest: $1" > /dev/ttyS0
    [ -n "$ERR" ] && echo "podling-vmrt guest: $1" > "$ERR"
    finish "${2:-255}"
}

while read -r m; do
    insmod "/lib/modules/$m" || echo "insmod $m failed" > /dev/ttyS0
done < /modules.order
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none vmrt-cfg /cfg \
    || { echo "cannot mount the config share" > /dev/ttyS0; poweroff -f; }
. /cfg/guest.env

port() {
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${p##*/}"; return 0; }
    done
    return 1
}
i=0
until OUT=$(port stdout) && ERR=$(port stderr) && AGENT=$(port agent); do
    i=$((i + 1)); [ $i -gt 100 ] && fail "virtio console ports never appeared"
    sleep 0.05
done

ro=""; [ "$VMRT_ROOT_RO" = 1 ] && ro=",ro"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144$ro vmrt-rootfs /ct \
    || fail "cannot mount the container's root filesystem"
. /cfg/mounts.sh
hostname "$VMRT_HOSTNAME"
ip link set lo up
if [ -n "$VMRT_IP" ]; then
    ip link set eth0 mtu "$VMRT_MTU" up
    ip addr add "$VMRT_IP" dev eth0
    [ -n "$VMRT_GW" ] && ip route add default via "$VMRT_GW"
fi

agent() {
    exec 3<>"$AGENT"
    while :; do
        if ! read -r verb id arg <&3; then sleep 0.2; continue; fi
        case "$verb" in
        EXEC)
            echo "$arg" | base64 -d > /run/exec.sh
            sh /run/exec.sh < /dev/null > /run/exec.out 2> /run/exec.err
            rc=$?
            { printf 'OUT %s ' "$id"; base64 -w 0 /run/exec.out; echo
              printf 'ERR %s ' "$id"; base64 -w 0 /run/exec.err; echo
              echo "RC $id $rc"; } >&3
            rm -f /run/exec.sh /run/exec.out /run/exec.err ;;
        SIG)
            kill -"$arg" "$(cat /run/payload.pid)" 2>/dev/null; echo "RC $id $?" >&3 ;;
        *)
            echo "RC $id 0" >&3 ;;
        esac
    done
}
agent &

sh /cfg/run.sh < /dev/null > "$OUT" 2> "$ERR" &
echo $! > /run/payload.pid
wait $!
finish $?
"""
