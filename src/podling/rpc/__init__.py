"""podling's gRPC server: HTTP/2 and gRPC, only as much as a CRI server on a unix socket needs."""
