"""A sweep: a grid of runs queued as one."""
