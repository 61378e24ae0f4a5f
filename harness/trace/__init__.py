"""The trace of a run: Intel PT per CPU (pt/), text-poke sideband, ELF snapshots with symbols,
verification, and what the real tools read: perf.data for perf, a libipt binding."""
