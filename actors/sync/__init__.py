"""The ``sync`` actor: one per node, it owns the node's model cache (``models_dir``)."""
