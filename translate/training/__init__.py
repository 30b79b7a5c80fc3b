"""Training: a run in its directory (resume checks, summary), the loop (trainer), one update (loss,
precision, accumulation, EMA), the optimiser and schedule, progress logging, checkpoint averaging."""
