"""The ``dccnn`` command line (Typer + Rich)."""
