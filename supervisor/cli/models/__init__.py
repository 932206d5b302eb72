"""download, models, rm-model and swap: the models on the nodes' disks."""
