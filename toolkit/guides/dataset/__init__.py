"""Training sets and scale-out: ``export`` writes photos + guides + captions as a ControlNet training
dataset (Parquet or WebDataset shards), with the local or the Ray batch engine (``guides.engines``).

Importing this package imports neither pyarrow nor ray; each is imported where it is used.
"""
