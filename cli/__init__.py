"""The ``blackbox`` command line."""
