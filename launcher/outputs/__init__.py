"""A job's outputs under `<train_url>/<job>/`: the layout, metrics, checkpoints, logs and
the run report."""
