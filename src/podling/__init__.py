"""podling: a Kubernetes container runtime serving the CRI v1 API."""

__version__ = "0.1.0"
