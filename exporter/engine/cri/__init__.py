"""The CRI backend: Kubernetes nodes' runtimes (containerd, CRI-O) over the CRI v1 gRPC API.

Imported only when `runtime.endpoint` is set: gRPC and protobuf come with the `[cri]` extra, so a Docker-only
install never loads them.
"""
