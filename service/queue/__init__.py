"""Where runs are trained: the run lifecycle (the one writer of a run's row), the
training of a claimed run, the local worker pool, and the Celery queue."""
