"""The ControlNet stage: generate, reproduce, compare."""
