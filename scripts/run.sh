#!/usr/bin/env bash
# podling's main job, on a fresh Debian 12 machine, as root: install what is missing,
# start podlingd with its embedded defaults (if it is not already running) and show it
# working: the daemon answering, a first image loaded and listed. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

PODLING=.venv/bin/podling
LOG=/var/log/podlingd.log
if ! "$PODLING" version >/dev/null 2>&1; then
    echo "starting podlingd (log: $LOG)"
    setsid nohup .venv/bin/podlingd >>"$LOG" 2>&1 < /dev/null &
    for _ in $(seq 100); do
        "$PODLING" version >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

echo "== podling version"
"$PODLING" version
echo "== podling load (a busybox image built here from Debian's busybox-static)"
.venv/bin/python scripts/demo_image.py /var/lib/podling-demo/busybox.tar
"$PODLING" load /var/lib/podling-demo/busybox.tar
echo "== podling images"
"$PODLING" images

echo "== podling run: a pod with one container (scripts/demo/*.yaml)"
for old in $("$PODLING" pods -q --name '^demo$'); do   # a demo pod from an earlier run
    "$PODLING" stopp "$old" >/dev/null && "$PODLING" rmp "$old" >/dev/null
done
rm -f /var/log/podling-demo/hello.log   # the kubelet, too, gives each attempt a new log
cid=$("$PODLING" run scripts/demo/container.yaml scripts/demo/pod.yaml)
echo "container $cid"
"$PODLING" pods
"$PODLING" ps
echo "== podling logs ${cid:0:13}"
for _ in $(seq 50); do
    "$PODLING" logs "$cid" | grep -q hello && break
    sleep 0.1
done
"$PODLING" logs "$cid"
echo
echo "podlingd is serving on unix:///run/podling/podling.sock (log: $LOG)."
echo "Remove the demo pod with: $PODLING stopp $("$PODLING" pods -q --name '^demo$') && $PODLING rmp ..."
echo "Stop the daemon with: pkill -TERM podlingd (containers keep running; a restart finds them)"
