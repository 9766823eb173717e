"""Several processes: the supervisor and a worker's entry point."""
