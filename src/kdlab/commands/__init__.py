"""CLI subcommands, one module each (see :mod:`kdlab.cli`)."""
