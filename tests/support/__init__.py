"""What tests share. Test modules import helpers from here and get fixtures from conftest.py;
no test module imports another.

- `app`: the app in the test's process: `make_settings`, `run_body`, `submit`, `train_now`,
  `db_row`, `problem`, `wait_for`, and the hold hook (`hold_runs`, `held_at`, `release`).
- `processes`: `rnnlab` in processes of its own: `serve`, `CLI`, `clean_env`, process groups.
- `browser`: Debian's Chromium and chromedriver, offline (`offline_flags`, `webdriver`, `shot`).
- `servers`: throwaway Redis and PostgreSQL on loopback; pytest-free, benchmarks/sweep.py
  starts its servers with it too.
- `missing`: skip a test for want of a program, or fail it where that is required.

No test relies on a run taking a minimum time: a test that must act on a running run holds it
at an epoch boundary with the test-only setting RNNLAB_HOLD_FILE (Settings.hold_file,
`hold_runs`), waits for it there (its epochs through the API, or `held_at`), then cancels,
kills, stops or releases it.

Settings the tests read: RNNLAB_REQUIRE_SERVERS=1 and RNNLAB_REQUIRE_BROWSER=1 fail the tests
whose Redis/PostgreSQL or Chromium is missing instead of skipping them (.ci/run sets both);
RNNLAB_SCREENSHOT_DIR keeps the browser tests' screenshots; RNNLAB_FUZZ_EXAMPLES sets
schemathesis' examples per operation.

Markers (pyproject.toml): `slow`, `subprocess`, `servers`, `browser`. Every test runs by
default; `scripts/test --fast` leaves the marked ones out: the unit tests and the in-process
API tests (TestClient, in-process workers).
"""
