"""genqueue's benchmark harness: `make bench` (full) and `make bench-quick`."""
