"""Network definitions only, written to load the public checkpoints unchanged."""
