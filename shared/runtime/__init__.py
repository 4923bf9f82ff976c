"""Process plumbing: settings, logging, metrics, Redis connections, Celery configuration, the stack."""
