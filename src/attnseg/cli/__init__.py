"""Command-line interface (``attnseg``); nothing in the package imports from here."""
