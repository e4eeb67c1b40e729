"""The pod sandbox's OS pieces: pinned namespaces, CNI networking, and the pod's files.

- namespaces.py: create a pod's network / IPC / UTS namespaces and keep them alive as
  bind-mounted files (and release them), run code inside a pod's network namespace.
- cni.py + cni_config.py: run CNI plugin chains (spec 1.0) to wire a pod's network.
- files.py: the pod's hostname, resolv.conf and hosts files that containers bind-mount.
"""
