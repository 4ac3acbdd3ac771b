"""The gRPC face of the backend: server start-up, one thin method per RPC, status mapping,
request logs, metrics and the command-line client."""
