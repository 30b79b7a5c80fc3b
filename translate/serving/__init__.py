"""Serving trained runs over HTTP: the models loaded (registry), requests batched (batcher), the app (app)."""
