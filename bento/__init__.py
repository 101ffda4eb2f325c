"""BentoML serving: services per task, auth, batching, input capture."""
