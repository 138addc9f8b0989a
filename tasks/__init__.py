"""Thin Celery tasks: each takes ids, declares its delivery guarantees and calls the domain."""
