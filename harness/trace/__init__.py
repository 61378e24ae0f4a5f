"""The trace of a run: Intel PT per CPU (pt/), text-poke sideband, kcore snapshots, verification."""
