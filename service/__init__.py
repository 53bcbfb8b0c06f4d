"""rnnlab's REST service: settings, database, run lifecycle, workers, inference and routes."""
