"""The MLflow UI of the production server, in headless Chromium: a person looking for the loss
curve of the pipeline's run and for the champion in the model registry finds both.

Screenshots land in tests/.artifacts/ (docs/images/ keeps the ones the README shows)."""

from pathlib import Path

import pytest

from tests.production.conftest import MODEL_NAME

pytestmark = [pytest.mark.production, pytest.mark.browser, pytest.mark.integration]

SCREENSHOTS = Path(__file__).resolve().parents[1] / ".artifacts"
CHROMIUM = "/usr/bin/chromium"  # Debian's; nothing is downloaded
# Without the background-networking flags Chromium keeps calling home, which this machine refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page(mlflow_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900},
                                      http_credentials={"username": mlflow_server.username,
                                                        "password": mlflow_server.password})
        context.set_default_timeout(30_000)
        yield context.new_page()
        browser.close()


def test_run_loss_chart_and_champion_alias_are_shown(deployment, mlflow_server, page, monkeypatch):
    import mlflow

    for key, value in mlflow_server.env().items():
        monkeypatch.setenv(key, value)
    champion = mlflow.MlflowClient(mlflow_server.uri).get_model_version_by_alias(MODEL_NAME, "champion")
    run_name = mlflow.MlflowClient(mlflow_server.uri).get_run(champion.run_id).info.run_name
    SCREENSHOTS.mkdir(exist_ok=True)
    show_loss_chart(page, mlflow_server.uri, run_name, SCREENSHOTS / "mlflow-run.png")
    show_champion(page, SCREENSHOTS / "mlflow-registry.png")


def show_loss_chart(page, base_url: str, run_name: str, screenshot: Path) -> None:
    """Home -> experiment -> the run -> Model metrics, filtered to the loss curves."""
    from playwright.sync_api import expect

    page.goto(base_url)
    page.get_by_text("Model training", exact=True).click()  # the UI opens in its GenAI view
    dismiss(page.get_by_role("button", name="Close", exact=True))  # the assistant side panel
    page.get_by_role("link", name=MODEL_NAME, exact=True).first.click()
    page.get_by_role("link", name=run_name, exact=True).click()
    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_placeholder("Search metric charts").fill("loss")
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(has_text="train_loss")
    expect(card).to_be_visible()
    # A drawn line with many points, not an empty chart or a single bar.
    line = card.locator("path.js-line").first
    expect(line).to_be_visible()
    assert line.get_attribute("d").count("L") >= 10
    page.screenshot(path=str(screenshot))


def show_champion(page, screenshot: Path) -> None:
    """Model registry -> the model: version 1 carries the champion alias."""
    from playwright.sync_api import expect

    page.get_by_role("link", name="Model registry").click()
    dismiss(page.get_by_role("button", name="Try it now"))  # the new-registry-UI announcement
    page.get_by_role("row").get_by_role("link", name=MODEL_NAME, exact=True).click()
    row = page.get_by_role("row").filter(has_text="Version 1")
    # The alias tag, not just the word (the promotion reason mentions it too).
    expect(row.get_by_role("status", name="champion", exact=True)).to_have_text("@ champion")
    page.screenshot(path=str(screenshot))


def dismiss(popup) -> None:
    """Close a pop-up the UI shows on a first visit, if it shows one."""
    from playwright.sync_api import TimeoutError

    try:
        popup.click(timeout=5_000)
    except TimeoutError:
        pass  # not shown this time (the UI remembers it per browser profile)
