"""rnnlab's REST service: settings, database, run lifecycle, workers, inference and routes."""

from importlib.metadata import version

# The one source of the version is pyproject.toml; the installed package's metadata carries it.
__version__ = version("rnnlab")
