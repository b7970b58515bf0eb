"""`python -m bench [OPTIONS]` (from the repository root): the bench's command line, on the
worker's allocator like `streams bench` (the engine runs measured here: streams/allocator.py)."""

import sys

from streams.allocator import AllocatorError, ensure_allocator
from streams.settings import Settings

if "--help" not in sys.argv[1:]:
    try:
        ensure_allocator(Settings().allocator, module="bench")
    except AllocatorError as exc:
        sys.exit(f"error: {exc}")

from .cli import main  # noqa: E402

main()
