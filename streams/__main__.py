import sys

from .allocator import reexec_early

reexec_early(sys.argv)  # before the CLI's imports: see streams/allocator.py

from .cli import app

app()
