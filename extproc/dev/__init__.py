"""Development and test tools: the local stack (`tokengate dev`), a dev Redis, the mock
provider, `make bench`. Never imported by the data path."""
