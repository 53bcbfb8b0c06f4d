"""Outputs per time step from a stored model: /predict, the model cache."""
