"""Benchmark protocols, one module each.

A protocol module that defines ``add_parser(subparsers)`` appears as
``kdlab protocol <name>`` (see :mod:`kdlab.commands.protocol`); nothing else needs editing.
"""
