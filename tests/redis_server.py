"""Real Redis servers for tests (see extproc.devredis)."""

from extproc.devredis import RedisClusterNodes, RedisServer, free_port_pair

__all__ = ["RedisClusterNodes", "RedisServer", "free_port_pair"]
