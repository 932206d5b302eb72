"""Cluster state: events (``events``), frozen views (``views``), their fold and reads
(``store.ClusterState``), and the numbered feed subscribers follow (``feed``)."""

from supervisor.state.store import ClusterState

__all__ = ["ClusterState"]
