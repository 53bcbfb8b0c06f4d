"""schemathesis hooks for tests/service/test_schemathesis.py (loaded through its config file).

One check replaces schemathesis' `positive_data_acceptance`: a request the schema calls valid
must be accepted, except for the 422s the schema documents but JSON Schema cannot
express, recognised by their error type and nothing else:

- `combined_limit_exceeded`: a bound across fields (n_sequences × seq_len, a run's activation
  memory, the steps of all sequences of a /predict request), described in the schema's text;
- `marker_probs_sum`: the three marker probabilities must sum to 1;
- `sweep_model_missing`, `sweep_field_twice`: a sweep names the model in its base or its
  grid, and each field in one of them only;
- `non_finite_output`: a network whose output is not a finite number for that input.

And one 400: the Open Inference Protocol's inference (/v2/models/…/infer) refuses, as its
description says, tensors that do not fit the model (a shape against its data or its
datatype, lengths against the steps, numbers beyond float32) with the protocol's
`{"error": ...}`: a JSON Schema cannot tie a tensor's data to its shape.
"""

from __future__ import annotations

import json

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

DOCUMENTED_422 = {
    "combined_limit_exceeded",
    "marker_probs_sum",
    "non_finite_output",
    "sweep_model_missing",
    "sweep_field_twice",
}


def _documented_422(response) -> bool:
    if response.status_code != 422:
        return False
    try:
        errors = json.loads(response.content)["errors"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(errors) and all(e.get("type") in DOCUMENTED_422 for e in errors)


def _documented_400(response, case) -> bool:
    if response.status_code != 400 or not case.operation.path.endswith("/infer"):
        return False
    try:
        return isinstance(json.loads(response.content)["error"], str)
    except (ValueError, KeyError, TypeError):
        return False


@schemathesis.check
def positive_data_accepted_unless_documented(ctx, response, case):
    """positive_data_acceptance, but for the 422s and the 400 the schema's descriptions
    document."""
    if _documented_422(response) or _documented_400(response, case):
        return None
    return positive_data_acceptance(ctx, response, case)
