"""Benchmarks that print figures; run them from the repository root as modules.

    python -m benchmarks.train_speed
    python -m benchmarks.predict_memory
    python -m benchmarks.predict_latency

None of them is a test: they report, they never pass or fail.
"""
