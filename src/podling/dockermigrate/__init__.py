"""Migrate images from a Docker data root (overlay2) into podling, without a registry.

dataroot reads the image and layer dbs; tarsplit rebuilds each layer's original tar from
Docker's tar-split metadata and the overlay2 diff dir; layout writes the verified images
as an OCI image layout that the daemon's LoadImage imports like any archive.
"""
