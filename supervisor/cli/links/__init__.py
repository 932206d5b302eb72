"""rdma-test: a group's links checked by a transient probe group."""
