"""Real Redis servers for tests (see extproc.dev.redis_server)."""

from extproc.dev.redis_server import RedisClusterNodes, RedisServer, free_port_pair

__all__ = ["RedisClusterNodes", "RedisServer", "free_port_pair"]
