"""The network and its weights: config, MindSpore network, checkpoint loading, Hub download."""
