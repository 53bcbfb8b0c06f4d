"""The dashboard in a real headless Chromium (Debian's, through its chromedriver), offline.

Starts a run from the form, sees it in the table reach `succeeded`, sees its live loss curve
and prediction plots render, sends a prediction and compares two runs. Screenshots go to the
test's temporary directory (and to $RNNLAB_SCREENSHOT_DIR when set, to look at them: `shot`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import shot
from tests.support.processes import serve

pytestmark = [pytest.mark.browser, pytest.mark.subprocess]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with serve(tmp_path / "data") as server:
        yield server.url


def start_run(driver, **fields: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    Select(driver.find_element(By.ID, "f-model")).select_by_value(fields.pop("model"))
    for field_id, value in fields.items():
        box = driver.find_element(By.ID, field_id)
        box.clear()
        box.send_keys(value)
    before = driver.find_element(By.ID, "form-message").text
    driver.find_element(By.ID, "f-submit").click()

    # The message of this run, not the one an earlier run left there: reading that one (the
    # next POST not answered yet) returned the first run's id again, whose tick was then
    # clicked twice, and the comparison found no run ticked.
    def started(d) -> str | bool:
        text = d.find_element(By.ID, "form-message").text
        return text.startswith("started run") and text != before and text

    message = WebDriverWait(driver, 60).until(started)
    return message.split()[-1]


PAGE_STATE = """
return [document.getElementById("compare-summary").textContent,
        [...document.querySelectorAll("input.tick")].map(t => t.checked)];
"""

ROW_STATUS = """
const td = document.querySelector(`tr[data-run-id="${arguments[0]}"] td.status`);
return td ? td.textContent : null;
"""


def wait_row_status(driver, run_id: str, status: str, timeout: float = 180) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    # The table is redrawn every second: read it in one script, not through stale elements.
    def row_status(d):
        return d.execute_script(ROW_STATUS, run_id) == status

    WebDriverWait(driver, timeout, poll_frequency=0.2).until(row_status)


def clickable(driver, scope, css: str):
    """The element under `scope` once it is displayed and enabled (Swagger UI renders late)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(_d):
        found = scope.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].is_displayed() and found[0].is_enabled() else False

    return WebDriverWait(driver, 60).until(ready)


def curve_points(driver) -> int | None:
    """Points of the live loss curve's validation series (None before it is drawn)."""
    return driver.execute_script(
        "const p = document.querySelector('#loss-chart polyline.series-valid');"
        "return p && p.getAttribute('points').trim().split(' ').length;"
    )


def image_loaded(driver, element_id: str) -> bool:
    return driver.execute_script(
        "const i = document.getElementById(arguments[0]);"
        "return i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0;",
        element_id,
    )


def test_dashboard_trains_shows_predicts_and_compares(server: str, browser, tmp_path: Path) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    assert browser.title == "rnnlab — dashboard"
    small = {"f-epochs": "40", "f-nseq": "3", "f-seqlen": "100", "f-seed": "3"}
    lstm = start_run(browser, model="lstm", **small, **{"f-population": "2"})
    # It appears in the table (the page polls /runs) and trains to the end.
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(ROW_STATUS, lstm) is not None)
    wait_row_status(browser, lstm, "succeeded")
    # The live loss curve, drawn from the event stream: one point per epoch, a real size.
    WebDriverWait(browser, 60).until(lambda d: curve_points(d) == 40)
    size = browser.execute_script(
        "const r = document.querySelector('#loss-chart polyline.series-train')"
        ".getBoundingClientRect(); return [r.width, r.height];"
    )
    assert size[0] > 100 and size[1] > 0
    WebDriverWait(browser, 60).until(lambda d: image_loaded(d, "d-predictions"))
    WebDriverWait(browser, 60).until(lambda d: image_loaded(d, "d-scatter"))
    summary = browser.find_element(By.ID, "d-summary").text
    assert "succeeded, 40 of 40 epochs" in summary and "zero predictor" in summary
    shot(browser, tmp_path, "dashboard-run")

    # A prediction through the box: one output per step of the example sequence.
    browser.find_element(By.ID, "p-button").click()
    out = WebDriverWait(browser, 60).until(
        lambda d: (
            d.find_element(By.ID, "p-output").text.startswith("sequence 0:")
            and d.find_element(By.ID, "p-output").text
        )
    )
    assert len(out.split(":", 1)[1].split(",")) == 5

    # A second network, then both ticked and compared.
    elman = start_run(browser, model="elman", **small)
    assert elman != lstm
    wait_row_status(browser, elman, "succeeded")
    for run_id in (lstm, elman):
        browser.execute_script(
            'document.querySelector(`tr[data-run-id="${arguments[0]}"] input.tick`).click()',
            run_id,
        )
    browser.execute_script('document.getElementById("compare-button").click()')
    try:
        text = WebDriverWait(browser, 60).until(
            lambda d: (
                "did best" in d.find_element(By.ID, "compare-summary").text
                and d.find_element(By.ID, "compare-summary").text
            )
        )
    except TimeoutException:
        pytest.fail(f"no comparison; the page held {browser.execute_script(PAGE_STATE)}")
    assert "lstm" in text and "elman" in text
    rows = browser.find_elements(By.CSS_SELECTOR, "#compare-table tbody tr")
    assert len(rows) == 2
    WebDriverWait(browser, 60).until(lambda d: image_loaded(d, "compare-plot"))
    shot(browser, tmp_path, "dashboard-compare")

    # The form shows the API's refusal.
    start = browser.find_element(By.ID, "f-population")
    start.clear()
    start.send_keys("65")
    browser.find_element(By.ID, "f-submit").click()
    WebDriverWait(browser, 60).until(lambda d: "422" in d.find_element(By.ID, "form-message").text)
    assert "population" in browser.find_element(By.ID, "form-message").text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    # The one expected error: the refused POST /runs (422) the page just showed.
    assert all("422" in e["message"] for e in errors), errors


KEY = "browser-test-key"


def test_with_api_keys_the_docs_authorize_and_the_dashboard_asks(tmp_path: Path, browser) -> None:
    """Swagger UI's Authorize sends the key; the dashboard asks for it and then works fully."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with serve(tmp_path / "data", RNNLAB_API_KEYS=f"other-key,{KEY}") as server:
        url = server.url
        # Swagger UI: try GET /runs without the key (401), then Authorize and try again (200).
        browser.get(url + "/docs")
        op = WebDriverWait(browser, 60).until(
            lambda d: d.find_element(By.ID, "operations-runs-list_runs")
        )
        op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        WebDriverWait(browser, 10).until(
            lambda d: op.find_element(By.CSS_SELECTOR, "button.try-out__btn")
        ).click()
        clickable(browser, op, "button.execute").click()

        def status(d):
            cells = op.find_elements(
                By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"
            )
            return cells and cells[0].text.strip()

        assert WebDriverWait(browser, 60).until(status) == "401"
        browser.find_element(By.CSS_SELECTOR, ".auth-wrapper button.authorize").click()
        modal = WebDriverWait(browser, 10).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".modal-ux")
        )
        modal.find_element(By.CSS_SELECTOR, "input").send_keys(KEY)
        modal.find_element(By.CSS_SELECTOR, "button.authorize").click()
        modal.find_element(By.CSS_SELECTOR, "button.btn-done").click()
        clickable(browser, op, "button.execute").click()
        WebDriverWait(browser, 60).until(lambda d: status(d) == "200")
        curl = op.find_element(By.CSS_SELECTOR, ".curl-command").text
        assert f"Authorization: Bearer {KEY}" in curl
        shot(browser, tmp_path, "docs-authorized")

        # The dashboard: the page shell loads, asks for the key, then runs, streams and plots.
        browser.get(url + "/")
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "key-form").is_displayed())
        box = browser.find_element(By.ID, "key-input")
        box.send_keys("wrong-key")
        browser.find_element(By.ID, "key-submit").click()
        WebDriverWait(browser, 60).until(
            lambda d: "refused" in d.find_element(By.ID, "key-message").text
        )
        box.send_keys(KEY)
        browser.find_element(By.ID, "key-submit").click()
        WebDriverWait(browser, 60).until(
            lambda d: not d.find_element(By.ID, "key-form").is_displayed()
        )
        small = {"f-epochs": "15", "f-nseq": "3", "f-seqlen": "60", "f-seed": "4"}
        run_id = start_run(browser, model="lstm", **small, **{"f-population": "1"})
        wait_row_status(browser, run_id, "succeeded")
        # The curve comes from an EventSource and the plots from <img>: both ride on the cookie.
        WebDriverWait(browser, 60).until(lambda d: curve_points(d) == 15)
        WebDriverWait(browser, 60).until(lambda d: image_loaded(d, "d-predictions"))
        shot(browser, tmp_path, "dashboard-with-key")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        # The expected refusals: the page's first /runs without a key and the wrong key.
        assert all("401" in e["message"] for e in errors), errors
