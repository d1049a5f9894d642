"""Speaks to users: the pledgeval CLI and the BentoML HTTP service."""
