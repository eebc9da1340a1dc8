"""Executors move data between the pipeline's functions: `local` (processes on this machine) and `spark`."""
