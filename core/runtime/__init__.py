"""Where computation runs: the device, and sharding over torchrun processes."""
