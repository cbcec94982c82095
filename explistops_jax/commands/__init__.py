"""Subcommands of the ``explistops`` command line, one module each.

Every module provides ``add_arguments(parser)`` and ``run(args) -> int`` and is
listed in :data:`explistops_jax.cli.COMMANDS`, which imports it only when its
command runs.
"""
