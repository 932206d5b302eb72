"""Models on the cluster: downloads, inventory, transfers between nodes and swaps."""
