"""Training sets and scale-out: ``export`` writes photos + guides + captions as a ControlNet training
dataset (Parquet or WebDataset shards); ``ray_engine`` runs the batch engine's jobs on Ray Data.

Importing this package imports neither pyarrow nor ray; each is imported where it is used.
"""
