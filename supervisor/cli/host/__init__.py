"""A machine becoming a node: add-host, join, remove-host, bootstrap, doctor."""
