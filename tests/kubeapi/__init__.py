"""A test Kubernetes API server (see server.py)."""
