"""Protocols: experiments that train several runs and report one table
(``kdlab protocol NAME``). Each module has ``main(argv) -> int``."""
