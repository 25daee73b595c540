"""Kubernetes API access, configuration, and the pure reading of API objects."""
