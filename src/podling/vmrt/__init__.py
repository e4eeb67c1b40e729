"""podling-vmrt: an OCI runtime CLI that runs each container in a qemu guest of its own.

conmon and podling drive it like runc (create/start/state/kill/delete/exec); the guest
kernel boots an initramfs built by `initramfs.py`, mounts the container's rootfs over
virtio-9p and runs the process. See docs/vm-isolation.md.
"""
