"""OCI runtimes: the CRI → OCI spec, runc (and friends) and the conmon monitor."""
