"""translate: train and compare neural machine translation models end to end."""

import sys

from translate.runtime.allocator import preload_tcmalloc, started_as_command

__version__ = "0.1.0"

if started_as_command(sys.orig_argv):  # `python -m translate train …`: restart on tcmalloc before torch loads
    preload_tcmalloc()
