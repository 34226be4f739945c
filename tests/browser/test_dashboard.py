"""The web dashboard in Debian's Chromium (driven by Playwright) against a live coordinator process,
with real volunteer processes training.

Skipped, saying why, where /usr/bin/chromium or the playwright package is missing (`.ci/run`
installs both). Set COMMONWEIGHTS_SCREENSHOTS=docs/screenshots to refresh the committed screenshots;
otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from commonweights.cli import main
from tests.browser.conftest import needs_chromium
from tests.support.live import REPO, LiveCoordinator, live_coordinator, poll, stop
from training.privacy_accounting import gaussian_epsilon, releases_within

needs_chromium()

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TRAINING_S = 240.0  # a bound on waiting for volunteers, not a sleep
UI_MS = 15_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> Iterator[LiveCoordinator]:
    with live_coordinator(tmp_path_factory.mktemp("browser"), small_dataset) as live:
        yield live


@pytest.fixture
def page(browser: Any, server: LiveCoordinator) -> Iterator[Any]:
    """A fresh browser context (nobody signed in); fails the test on any uncaught script error."""
    context = browser.new_context(viewport=DESKTOP, base_url=server.url)
    context.set_default_timeout(UI_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(f"{tab.url}: {error}"))
    tab.on(
        "console",
        lambda message: (
            errors.append(f"{tab.url}: {message.text}")
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    yield tab
    context.close()
    assert errors == [], "script errors in the page"


def sign_in(page: Any, token: str, lands_on: str) -> None:
    page.goto("/signin")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{lands_on}")


def fill_spec(page: Any, values: dict[str, str]) -> None:
    for path, value in values.items():
        field = page.locator(f"[name='{path}']")
        if field.evaluate("node => node.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)


SMALL_CAMPAIGN = {
    "description": "A tiny GPT learning Python's standard library, trained by the volunteers of this test.",
    "dataset": "small",
    "token_budget": "1000000",
    "inner.steps": "8",
    "inner.batch_size": "4",
    "inner.seq_len": "32",
    "inner.warmup_steps": "2",
    "rounds.units_per_round": "2",
    "rounds.min_accepted": "2",
    "validation.replication_rate": "0",
}


def volunteer(server: LiveCoordinator, folder: Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "commonweights",
        "volunteer",
        "run",
        "--coordinator",
        server.ws,
        "--threads",
        "1",
        "--name",
        name,
        "--config-dir",
        str(folder / "config"),
        "--cache-dir",
        str(folder / "cache"),
        "--data-dir",
        str(folder / "data"),
        "--quiet",
        *extra,
    ]
    with (folder / "volunteer.log").open("wb") as log:
        return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def points(page: Any) -> int:
    return int(page.locator("#chart").get_attribute("data-points") or 0)


def test_an_anonymous_visitor_can_watch_but_reaches_no_lead_or_admin_action(page: Any, server: LiveCoordinator) -> None:
    status, campaign = server.call(
        "POST", "/api/campaigns", token=server.admin_token, body={"name": "public-view", **_spec_json()}
    )
    assert status == 201, campaign
    page.goto("/")
    page.get_by_role("link", name="public-view").click()
    page.wait_for_url(f"**/campaigns/{campaign['id']}")
    page.get_by_role("heading", name="public-view").wait_for()
    assert page.locator("#manage").is_hidden()
    for link in ("New campaign", "Your campaigns", "Admin"):
        assert page.get_by_role("link", name=link, exact=True).count() == 0
    for path, needs in (("/campaigns/new", "project-lead"), ("/lead", "project-lead"), ("/admin", "admin token")):
        page.goto(path)
        page.locator("#gate").get_by_text(needs).wait_for()
        assert page.locator("form.spec, #admin, #mine").first.is_hidden()
    # The server enforces it; the pages only hide it.
    base = f"/api/campaigns/{campaign['id']}"
    for method, path in (
        ("POST", "/api/campaigns"),
        ("POST", base + "/pause"),
        ("POST", base + "/stop"),
        ("GET", "/api/tokens"),
        ("POST", "/api/tokens"),
        ("POST", "/api/volunteers/anyone/ban"),
        ("GET", "/api/server"),
        ("GET", "/api/datasets"),
    ):
        assert server.call(method, path, body={})[0] == 401, (method, path)
    lead = server.lead_token("not-an-admin")
    assert server.call("POST", "/api/tokens", token=lead, body={"label": "x"})[0] == 403
    assert server.call("POST", base + "/pause", token=lead)[0] == 403, "a lead may not pause another's campaign"
    assert server.call("POST", base + "/pause", token=server.admin_token)[0] == 200  # no work for later tests


def _spec_json() -> dict[str, Any]:
    return {
        "dataset": "small",
        "inner": {"steps": 3, "batch_size": 2, "seq_len": 32},
        "rounds": {"units_per_round": 2, "min_accepted": 2},
    }


def test_a_bad_form_value_shows_its_error_next_to_the_field(page: Any, server: LiveCoordinator, shots: Path) -> None:
    sign_in(page, server.lead_token("form-tester"), "/lead")
    page.goto("/campaigns/new")
    page.get_by_label("Name", exact=True).fill("bad-values")
    fill_spec(page, {**SMALL_CAMPAIGN, "inner.steps": "0", "rounds.min_accepted": "5"})
    page.get_by_role("button", name="Post campaign").click()
    steps = page.get_by_label("Inner steps (H)")
    page.locator("#f-inner-steps-error").get_by_text("inner.steps must be positive, got 0").wait_for()
    assert steps.get_attribute("aria-invalid") == "true"
    assert "f-inner-steps-error" in (steps.get_attribute("aria-describedby") or "")
    page.locator("#f-rounds-min_accepted-error").get_by_text("can't exceed rounds.units_per_round").wait_for()
    summary = page.get_by_role("alert").filter(has_text="wasn't posted")
    assert summary.is_visible()
    assert page.evaluate("document.activeElement.id") == "summary"
    page.set_viewport_size(PHONE)
    page.get_by_label("Inner steps (H)").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "campaign-form-error-phone.png"))
    assert all(c["name"] != "bad-values" for c in server.call("GET", "/api/campaigns")[1]["campaigns"])


def test_a_lead_posts_a_campaign_watches_volunteers_train_it_live_and_pauses_it(
    page: Any, server: LiveCoordinator, shots: Path, tmp_path: Path
) -> None:
    target = int(os.environ.get("COMMONWEIGHTS_SCREENSHOT_VERSIONS", "3"))  # chart points before pausing
    sign_in(page, server.lead_token("ada"), "/lead")
    page.get_by_role("link", name="New campaign").first.click()
    page.wait_for_url("**/campaigns/new")
    page.get_by_label("Name", exact=True).fill("stdlib-tiny")
    fill_spec(page, SMALL_CAMPAIGN)
    page.screenshot(path=str(shots / "campaign-form.png"), full_page=True)
    page.get_by_role("button", name="Post campaign").click()
    page.wait_for_url(re.compile(r"/campaigns/\d+$"))
    campaign_id = int(page.url.rsplit("/", 1)[1])

    page.goto("/")
    page.get_by_role("link", name="stdlib-tiny").wait_for()
    page.goto("/lead")
    page.locator(f"tr[data-campaign='{campaign_id}']").get_by_text("active").wait_for()

    page.goto(f"/campaigns/{campaign_id}")
    page.locator("#live.on").wait_for()
    units = str(target + 1)  # two volunteers, two units a round: enough for `target` versions after v0
    workers = [
        volunteer(server, tmp_path / name, name, "--campaign", str(campaign_id), "--max-units", units)
        for name in ("volunteer-ada", "volunteer-grace")
    ]
    try:
        poll(
            f"{target} evaluated versions on the chart, without reloading",
            lambda: points(page) >= target or _exited(workers),
            timeout=TRAINING_S,
            every=0.5,
        )
        assert points(page) >= target, _logs(tmp_path, server)
        accepted = 2 * (target - 1)  # the stats arrive every few seconds, a little after the chart
        poll(
            f"{accepted} accepted updates in the live stats",
            lambda: int(page.locator("#s-accepted").inner_text()) >= accepted,
            timeout=30,
        )
        page.locator("#leaderboard").get_by_text("volunteer-ada").wait_for()
        page.locator("#leaderboard").get_by_text("volunteer-grace").wait_for()
        page.screenshot(path=str(shots / "campaign-live.png"), full_page=True)
        page.set_viewport_size(PHONE)
        page.screenshot(path=str(shots / "campaign-live-phone.png"), full_page=True)
        page.set_viewport_size(DESKTOP)

        page.get_by_role("button", name="Pause").click()
        page.locator("#manage-result").get_by_text("is now paused").wait_for()
        page.locator("#status").get_by_text("paused").wait_for()
        assert page.get_by_role("button", name="Resume").is_enabled()
        assert server.call("GET", f"/api/campaigns/{campaign_id}")[1]["status"] == "paused"
    finally:
        for worker in workers:
            stop(worker)


def _exited(workers: list[subprocess.Popen[bytes]]) -> bool:
    return all(w.poll() is not None for w in workers)


def _logs(tmp_path: Path, server: LiveCoordinator) -> str:
    volunteers = "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*/volunteer.log"))
    return f"volunteers:\n{volunteers}\ncoordinator:\n{server.server_log()}"


def test_an_admin_manages_tokens_and_bans_a_volunteer(page: Any, server: LiveCoordinator, tmp_path: Path) -> None:
    worker = volunteer(server, tmp_path / "v", "volunteer-to-ban", "--max-units", "1")
    try:
        poll(
            "the volunteer to register",
            lambda: any(
                v["name"] == "volunteer-to-ban" for v in server.call("GET", "/api/volunteers")[1]["volunteers"]
            ),
            timeout=TRAINING_S,
        )
    finally:
        stop(worker)
    sign_in(page, server.admin_token, "/admin")
    page.locator("#health").get_by_text("Disk free").wait_for()

    page.get_by_label("Who is it for").fill("grace")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_label("New token — copy it now")
    secret.wait_for()
    token = secret.input_value()
    assert token.startswith("cw-lead-")
    assert server.call("GET", "/api/me", token=token)[0] == 200
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="(grace)").click()
    page.locator("#notice").get_by_text("is revoked").wait_for()
    assert server.call("GET", "/api/me", token=token)[0] == 401

    ban = page.get_by_role("button", name="Ban volunteer-to-ban", exact=True)
    unban = page.get_by_role("button", name="Unban volunteer-to-ban", exact=True)
    ban.click()
    unban.wait_for()
    banned = {v["name"]: v["banned"] for v in server.call("GET", "/api/volunteers")[1]["volunteers"]}
    assert banned["volunteer-to-ban"] is True
    unban.click()
    ban.wait_for()


def test_a_volunteer_links_a_machine_watches_it_train_pauses_it_and_starts_a_team(
    page: Any, server: LiveCoordinator, shots: Path, tmp_path: Path
) -> None:
    lead = server.api.with_token(server.lead_token("machines"))
    spec = {"name": "my-machines", "dataset": "small", "token_budget": 10_000_000, **TRAINING_SPEC}
    campaign_id = int(lead.post_campaign(spec)["id"])
    page.goto("/machines")
    page.get_by_label("Name shown on leaderboards").fill("Ada Lovelace")
    page.get_by_role("button", name="Create account").click()
    shown_key = page.get_by_label("Your account key — copy it now")
    shown_key.wait_for()
    key = shown_key.input_value()
    assert key.startswith("cw-account-")

    worker = volunteer(server, tmp_path / "laptop", "ada-laptop", "--campaign", str(campaign_id))
    try:
        poll(
            "the machine to register",
            lambda: (tmp_path / "laptop" / "config" / "credentials.toml").exists() or worker.poll() is not None,
            timeout=TRAINING_S,
        )
        page.get_by_role("button", name="Make a link code").click()
        page.locator("#code-box").wait_for()
        code = page.locator("#link-code").inner_text()
        command = [sys.executable, "-m", "commonweights", "volunteer", "link", code, "--coordinator", server.ws]
        command += ["--config-dir", str(tmp_path / "laptop" / "config")]
        linked = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert linked.returncode == 0, linked.stderr
        row = page.locator("#machine-rows tr", has_text="ada-laptop")
        try:
            row.get_by_text("training").wait_for(timeout=TRAINING_S * 1000)  # the page refreshes itself
        except Exception as error:
            shown = page.locator("#account").inner_text()
            raise AssertionError(f"{shown}\n{_logs(tmp_path, server)}") from error
        row.get_by_role("link", name="my-machines").wait_for()
        page.screenshot(path=str(shots / "dashboard-machines.png"), full_page=True)

        page.get_by_role("button", name="Pause ada-laptop").click()
        row.get_by_text("paused by you").wait_for()
        poll(
            "the paused machine to give its unit back",
            lambda: server.call("GET", "/api/account", token=key)[1]["machines"][0]["current_unit"] is None,
            timeout=90,
        )
        page.get_by_role("button", name="Resume ada-laptop").click()
        row.get_by_role("button", name="Pause ada-laptop").wait_for()
    finally:
        stop(worker)

    page.get_by_text("Account settings").click()
    page.get_by_label("Account name").fill("Ada King")
    page.get_by_role("button", name="Rename").click()
    page.locator("#account-title").get_by_text("Ada King").wait_for()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Make a new account key").click()
    page.locator("#notice").get_by_text("has a new key").wait_for()
    assert server.call("GET", "/api/account", token=key)[0] == 401  # the old key no longer signs in
    page.get_by_label("Or start a team").fill("Analytical Engines")
    page.get_by_role("button", name="Start team").click()
    page.locator("#notice").get_by_text("You started Analytical Engines").wait_for()
    page.goto("/teams")
    page.locator("#team-rows").get_by_role("link", name="Analytical Engines").click()
    page.locator("#member-rows").get_by_text("Ada King").wait_for()
    page.screenshot(path=str(shots / "dashboard-teams.png"), full_page=True)


TRAINING_SPEC: dict[str, Any] = {
    "inner": {"steps": 600, "batch_size": 4, "seq_len": 32, "warmup_steps": 2},  # a minute or more a unit
    "rounds": {"units_per_round": 2, "min_accepted": 1},
    "validation": {"replication_rate": 0},
}


PRIVATE_CAMPAIGN: dict[str, Any] = {
    "name": "private-notes",
    "description": "A tiny GPT trained on notes its volunteers keep on their own computers.",
    "dataset": "small",
    "data": "volunteer",
    "codec": "int8",
    "token_budget": 1_000_000,
    "privacy": {"clip_norm": 0.1, "noise_multiplier": 1.5, "delta": 1e-5, "epsilon_budget": 8.0},
    "inner": {"steps": 4, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
    "rounds": {"units_per_round": 2, "min_accepted": 2},
    "validation": {"replication_rate": 0, "holdout_check_rate": 0, "check_rate": 0},
}


def own_notes(folder: Path, modules: tuple[str, ...]) -> None:
    """A volunteer's own text (some stdlib modules saved as notes), chosen with `volunteer data add`."""
    notes = folder / "notes"
    notes.mkdir(parents=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for module in modules:
        (notes / f"{module}.txt").write_text((stdlib / module).read_text(encoding="utf-8"), encoding="utf-8")
    command = ["volunteer", "data", "add", str(notes), "--config-dir", str(folder / "config")]
    assert main([*command, "--data-dir", str(folder / "data")]) == 0


def test_a_campaign_on_volunteers_own_files_shows_its_privacy_terms_and_the_epsilon_each_volunteer_spent(
    page: Any, server: LiveCoordinator, shots: Path, tmp_path: Path
) -> None:
    lead = server.lead_token("privacy")
    ordinary = server.call("POST", "/api/campaigns", token=lead, body={"name": "not-private", **_spec_json()})[1]
    assert server.call("POST", f"/api/campaigns/{ordinary['id']}/pause", token=lead)[0] == 200
    page.goto(f"/campaigns/{ordinary['id']}")
    page.locator("#leaderboard").get_by_text("No accepted updates yet.").wait_for()
    assert page.locator("#privacy").is_hidden(), "an ordinary campaign has no privacy panel"

    status, campaign = server.call("POST", "/api/campaigns", token=lead, body=PRIVATE_CAMPAIGN)
    assert status == 201, campaign
    page.goto(f"/campaigns/{campaign['id']}")
    panel = page.locator("#privacy")
    panel.get_by_text("No volunteer has sent an update yet.").wait_for()
    assert "files never leave their computer" in panel.inner_text()
    shown = {key: page.locator(f"#p-{key}").inner_text() for key in ("clip", "z", "std", "delta", "budget", "allowed")}
    allowed = releases_within(8.0, 1e-5, 1.5)
    assert shown == {
        "clip": "0.1",
        "z": "1.5",
        "std": "0.3",
        "delta": "1e-5",
        "budget": "ε = 8",
        "allowed": str(allowed),
    }
    page.locator("#live.on").wait_for()

    names = ("notes-ada", "notes-grace")
    for name, modules in zip(names, (("argparse.py", "dataclasses.py"), ("ast.py", "inspect.py")), strict=True):
        own_notes(tmp_path / name, modules)
    # `--campaign` only prefers: a volunteer waiting for the round's other update would take a unit of
    # another campaign of this module's coordinator and spend one of its two units there. Those wait.
    others = [
        c["id"]
        for c in server.call("GET", "/api/campaigns")[1]["campaigns"]
        if c["status"] == "active" and c["id"] != campaign["id"]
    ]
    for other in others:
        assert server.call("POST", f"/api/campaigns/{other}/pause", token=server.admin_token)[0] == 200
    workers = [
        volunteer(server, tmp_path / name, name, "--campaign", str(campaign["id"]), "--max-units", "2")
        for name in names
    ]
    rows = page.locator("#privacy-rows tr")
    try:
        poll(  # the page refreshes itself when a round's version is published
            "both volunteers' two updates in the privacy table, without reloading",
            lambda: (
                [rows.filter(has_text=name).filter(has_text=f"2 of {allowed}").count() for name in names] == [1, 1]
                or (_exited(workers) and rows.count() < 2)
            ),
            timeout=TRAINING_S,
            every=0.5,
        )
    finally:
        for worker in workers:
            stop(worker)
        for other in others:
            server.call("POST", f"/api/campaigns/{other}/resume", token=server.admin_token)
    assert rows.count() == 2, _logs(tmp_path, server)
    epsilon = gaussian_epsilon(1.5, 2, 1e-5)
    for name in names:
        cells = rows.filter(has_text=name).locator("td").all_inner_texts()
        assert cells == [name, f"2 of {allowed}", f"{epsilon:.2f}", f"{100 * epsilon / 8:.0f}%"]
    accounting = server.call("GET", f"/api/campaigns/{campaign['id']}/privacy")[1]
    assert sorted(v["name"] for v in accounting["volunteers"]) == sorted(names)
    box = panel.bounding_box()
    bottom = box["y"] + box["height"] + 16  # the page is at its top: the campaign's header, progress and privacy
    page.screenshot(
        path=str(shots / "dashboard-privacy.png"),
        full_page=True,
        clip={"x": 0, "y": 0, "width": DESKTOP["width"], "height": bottom},
    )
    page.set_viewport_size(PHONE)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the campaign page is {overflow}px wider than a 390px screen"


READY = {  # what shows once a page has loaded its data
    "/": "#live.on",
    "/machines": "#create-form",
    "/teams": "section.panel table",
    "/campaigns/new": "form.spec fieldset",
    "/lead": "#campaign-rows tr",
    "/admin": "#health dt",
    "/signin": "#signed-in",
}


@pytest.mark.parametrize("path", sorted(READY))
def test_pages_fit_a_phone_screen_without_sideways_scrolling(page: Any, server: LiveCoordinator, path: str) -> None:
    sign_in(page, server.admin_token, "/admin")
    page.set_viewport_size(PHONE)
    page.goto(path)
    page.locator(READY[path]).first.wait_for()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{path} is {overflow}px wider than a 390px screen"
    tiny = page.evaluate(
        """[...document.querySelectorAll('main button, main input, main select')]
           .filter(e => e.offsetParent && e.getBoundingClientRect().height < 40).map(e => e.id || e.textContent)"""
    )
    assert tiny == [], "touch targets smaller than about 44px"


def test_signing_in_works_from_the_keyboard_alone(page: Any, server: LiveCoordinator) -> None:
    page.goto("/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"
    page.goto("/signin")
    poll("the token field to take focus", lambda: page.evaluate("document.activeElement.id") == "token", timeout=10)
    page.keyboard.type("cw-lead-wrong")
    page.keyboard.press("Enter")
    page.locator("#token-error").get_by_text("isn't valid").wait_for()
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type(server.lead_token("keyboard"))
    page.keyboard.press("Enter")
    page.wait_for_url("**/lead")
    page.get_by_role("link", name="Your campaigns").first.wait_for()


@pytest.mark.parametrize(("scheme", "dark"), [("light", False), ("dark", True)])
def test_the_dashboard_follows_the_systems_colour_scheme(
    browser: Any, server: LiveCoordinator, shots: Path, scheme: str, dark: bool
) -> None:
    """`prefers-color-scheme`: a dark page on a dark system, with text that still contrasts."""
    context = browser.new_context(viewport=DESKTOP, base_url=server.url, color_scheme=scheme)
    try:
        tab = context.new_page()
        tab.goto("/")
        tab.locator("main").first.wait_for()
        background, text = tab.evaluate(
            """() => { const rgb = c => c.match(/\\d+/g).slice(0, 3).map(Number);
                       const page = getComputedStyle(document.documentElement), body = getComputedStyle(document.body);
                       const paint = body.backgroundColor.startsWith('rgba(0, 0, 0, 0') ? page : body;
                       return [rgb(paint.backgroundColor), rgb(body.color)]; }"""
        )

        def luminance(rgb: list[int]) -> float:
            return sum(w * c / 255 for w, c in zip((0.2126, 0.7152, 0.0722), rgb, strict=True))

        assert (luminance(background) < 0.2) is dark, f"{scheme}: background {background}"
        assert abs(luminance(text) - luminance(background)) > 0.6, f"{scheme}: text {text} on {background}"
        if dark:
            tab.screenshot(path=str(shots / "dashboard-dark.png"), full_page=True)
    finally:
        context.close()
