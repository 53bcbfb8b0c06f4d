"""A run: its endpoints, how it is stored and read, its event stream."""
