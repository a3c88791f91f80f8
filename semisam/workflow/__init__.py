"""Training as configured, above the trainer: one run, or self-training rounds (see :mod:`.train`)."""
