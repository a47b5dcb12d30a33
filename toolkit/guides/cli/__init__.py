"""The click command-line layer (thin: parsing and messages; the work is in the library)."""
