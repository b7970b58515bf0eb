from .allocator import reexec_early

reexec_early(__import__("sys").argv)  # before the CLI's imports: see streams/allocator.py

from .cli import app  # noqa: E402

app()
