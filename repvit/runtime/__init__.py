"""Running a model fast and measuring it: timing primitives, ``optimize_for_inference`` and the
latency/throughput benchmark."""
