"""The process model of `tokengate serve`: settings, runtime wiring, the gRPC server(s),
supervised workers and hot reload."""
