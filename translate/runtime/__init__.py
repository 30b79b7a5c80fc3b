"""Runtime: what every part stands on and nothing of translation — the device, precision and threads,
the ranks (DDP), files written atomically, the run lock, signals, one-line errors, checkpoints, the
allocator.  It imports no other part of the package."""
