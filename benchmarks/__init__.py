"""Benchmarks that print figures; run them from the repository root as modules.

    python -m benchmarks.size_sweep
    python -m benchmarks.train_speed
    python -m benchmarks.default_run
    python -m benchmarks.learning_quality
    python -m benchmarks.predict_latency
    python -m benchmarks.predict_memory
    python -m benchmarks.load
    python -m benchmarks.sweep

docs/performance.md has their latest figures, with the command behind each table.

None of them is a test: they report, they never pass or fail.
"""
