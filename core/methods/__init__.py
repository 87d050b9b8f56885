"""The training objectives and labeling: one module per method."""
