"""Training: the LightningModule, optimisers, parallelism, the vision stage, the demo, callbacks, tracking and the Lightning CLI."""
