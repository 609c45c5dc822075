"""Hydra configs; installed as the package ``selfsup.conf`` so entry points find them (pkg://selfsup.conf)."""
