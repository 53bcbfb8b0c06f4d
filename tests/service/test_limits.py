"""The limits table (service.limits) drives the checks, the published schema and the settings
validator alike: each limit, lowered, is enforced where it says and published as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from models.training import TrainConfig
from service.app import create_app
from service.limits import RUN_LIMITS, config_sizes
from tests.support.app import make_settings, run_body

DEFAULTS = config_sizes(TrainConfig())


def over(limit_setting: str, body: dict) -> dict:
    """`body` grown just past a limit of DEFAULTS[limit_setting] × 2 (other fields kept)."""
    bound = DEFAULTS[limit_setting] * 2
    data = body["data"]
    match limit_setting:
        case "max_epochs":
            body["epochs"] = bound + 1
        case "max_hidden_size":
            body["hidden_size"] = bound + 1
        case "max_batch_size":
            body["batch_size"] = bound + 1
        case "max_n_sequences":
            data["n_sequences"] = bound + 1
        case "max_seq_len":
            data["seq_len"] = bound + 1
        case "max_data_steps":
            data["n_sequences"], data["seq_len"] = 2, bound // 2 + 1
        case "max_train_activations":
            body["batch_size"], data["n_sequences"] = 2, 2
            data["seq_len"] = bound // (2 * body["hidden_size"] * body["population"]) + 1
    return body


@pytest.mark.parametrize("limit", RUN_LIMITS, ids=lambda lim: lim.setting)
def test_each_run_limit_is_checked_published_and_validated(tmp_path: Path, limit) -> None:
    bound = DEFAULTS[limit.setting] * 2
    settings = make_settings(tmp_path, **{limit.setting: bound})
    with TestClient(create_app(settings, start_workers=False)) as client:
        base = run_body(hidden_size=DEFAULTS["max_hidden_size"], population=1)
        base["data"] = {"n_sequences": 9, "seq_len": 300}
        body = over(limit.setting, base)
        r = client.post("/runs", json=body)
        assert r.status_code == 422, r.text
        errors = r.json()["errors"]
        assert [e["loc"] for e in errors] == [["body", *limit.loc]]
        assert f"at most {bound} on this server" in errors[0]["msg"]
        want = "combined_limit_exceeded" if limit.formula else "limit_exceeded"
        assert errors[0]["type"] == want
        # A sweep of that one run is refused the same way, before anything is stored.
        model = body.pop("model")
        r = client.post("/sweeps", json={"base": body, "grid": {"model": [model]}})
        assert r.status_code == 422, r.text
        assert [e["type"] for e in r.json()["errors"]] == [want]
        assert client.get("/runs").json()["items"] == []

        comps = client.get("/openapi.json").json()["components"]["schemas"]
        *parent, name = limit.loc
        if limit.formula:  # in the description, with this server's value
            assert limit.published.format(bound) in comps["RunCreate"]["description"]
        else:  # the field's maximum, on a run, a sweep's base and each grid value
            holders = ("DataSpec", "SweepData") if parent else ("RunCreate", "SweepBase")
            for holder in holders:
                prop = comps[holder]["properties"][name]
                maxima = [p.get("maximum") for p in prop.get("anyOf", [prop]) if "type" in p]
                assert bound in maxima, (holder, prop)
            grid = comps["SweepGrid"]["properties"][".".join(limit.loc)]
            items = grid.get("items") or next(p["items"] for p in grid["anyOf"] if "items" in p)
            assert items["maximum"] == bound

    # Below what a default run needs, the server refuses to start, naming the setting.
    with pytest.raises(ValidationError, match=f"RNNLAB_{limit.setting.upper()}="):
        make_settings(tmp_path, **{limit.setting: DEFAULTS[limit.setting] - 1})
    make_settings(tmp_path, **{limit.setting: DEFAULTS[limit.setting]})  # exactly enough
