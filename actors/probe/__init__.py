"""The link probe: correctness, latency and bandwidth of a group's collectives."""
