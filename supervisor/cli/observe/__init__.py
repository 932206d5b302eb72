"""status, nodes, monitor and logs: reading a running cluster."""
