"""The ``selfdistill`` command line: one entry point for operators, workers and the demo.

``app`` holds the groups and global options; each module beside it adds one group of
commands. Importing them registers the commands, in the order ``--help`` lists them.
"""

# isort: skip_file
from daemon.operating.cli.app import app
from daemon.operating.cli import kafka, workers, status, data, adapters, config  # noqa: F401
from daemon.operating.cli import sandbox  # noqa: F401

__all__ = ["app"]
