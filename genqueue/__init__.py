"""genqueue: a distributed, asynchronous job queue for AI content generation."""

__version__ = "0.1.0"
