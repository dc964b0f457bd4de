"""The moderators' console in a real browser (Debian's chromium under Playwright) against a real stack that
generates real text and images: log in, claim, decide with the keyboard and the buttons, escalate to an
admin, and after each step the database, the audit history and the delivery feed say the same as the page."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_helpers import (
    CONTRAST_JS,
    TEXT_PROMPTS,
    drain,
    generate,
    login,
    review,
    shown,
    shown_id,
    whole_feed,
)
from sqlalchemy import update

from genqueue.db.models import Review, utcnow
from genqueue.queue import redis_client

pytestmark = pytest.mark.slow


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _actions(history: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(h["action"], h["actor_name"]) for h in history]


def test_a_moderator_decides_with_the_keyboard_and_an_admin_decides_the_escalated_item(
        chromium: Any, console_stack: Any) -> None:
    expect, cs = _expect(), console_stack
    drain(cs)
    jobs = generate(cs, TEXT_PROMPTS, [3])
    ids = {j["id"] for j in jobs}
    ctx, page = login(chromium, cs.url, cs.keys["alice"])

    # The browser holds a session token in an HttpOnly, SameSite=Strict cookie, and never the key.
    cookie = {c["name"]: c for c in ctx.cookies()}["gq_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert cs.keys["alice"] not in json.dumps(ctx.storage_state())
    expect(page.locator(".user-name")).to_have_text("alice")
    expect(page.locator('[data-counter="pending"]')).to_have_text("4")
    expect(page.locator('[data-counter="escalated"]')).to_have_count(0)  # moderators do not see escalations

    page.keyboard.press("c")
    expect(page.locator("li.row")).to_have_count(4)
    assert {r.get_attribute("data-job-id") for r in page.locator("li.row").all()} == ids
    assert review(cs, shown_id(page)).claimed_by == cs.key_ids["alice"]
    # j and k move between the claimed items.
    rows = [r.get_attribute("data-job-id") for r in page.locator("li.row").all()]
    assert shown_id(page) == rows[0]
    page.keyboard.press("j")
    assert shown_id(page) == rows[1]
    page.keyboard.press("k")
    assert shown_id(page) == rows[0]
    page.keyboard.press("?")
    expect(page.locator("#help-dialog")).to_be_visible()
    expect(page.locator("#help-dialog")).to_contain_text("escalate it to an admin")
    page.keyboard.press("Escape")
    expect(page.locator("#help-dialog")).to_be_hidden()
    bar = page.locator(".actions").bounding_box()

    # Approve with the keyboard: the next item is there at once, without a reload or a layout jump.
    page.evaluate("window.__same_page = true")
    first = shown_id(page)
    page.keyboard.press("a")
    expect(page.locator("li.row")).to_have_count(3)
    assert shown_id(page) == rows[1] and page.evaluate("window.__same_page") is True
    assert page.locator(".actions").bounding_box() == bar
    row = review(cs, first)
    assert (row.status, row.decided_by) == ("approved", cs.key_ids["alice"])
    assert _actions(cs.admin.history(first)) == [("prescreen", "system"), ("claim", "alice"), ("approve", "alice")]
    assert whole_feed(cs.client)[first]["output"] == next(j for j in jobs if j["id"] == first)["output"]
    expect(page.locator('[data-counter="decided_today_me"]')).to_have_text("1")

    # Reject: a reason is required, and offered again next time.
    second = shown_id(page)
    page.keyboard.press("r")
    expect(page.locator("#reject-dialog")).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("#reject-error")).to_have_text("A rejection needs a reason.")
    page.fill("#reject-reason", "off topic for this site")
    page.keyboard.press("Enter")
    expect(page.locator("#reject-dialog")).to_be_hidden()
    expect(page.locator("li.row")).to_have_count(2)
    row = review(cs, second)
    assert (row.status, row.reason, row.decided_by) == ("rejected", "off topic for this site", cs.key_ids["alice"])
    history = cs.admin.history(second)
    assert _actions(history)[-1] == ("reject", "alice") and history[-1]["reason"] == "off topic for this site"
    assert second not in whole_feed(cs.client)
    page.keyboard.press("r")
    expect(page.locator("#reasons .reason")).to_have_text(["1 off topic for this site"])
    page.keyboard.press("Escape")
    expect(page.locator("#reject-dialog")).to_be_hidden()

    # Escalate: it leaves the moderator's queue and waits for an admin.
    third = shown_id(page)
    page.keyboard.press("e")
    expect(page.locator("li.row")).to_have_count(1)
    assert review(cs, third).status == "escalated"
    assert _actions(cs.admin.history(third))[-1] == ("escalate", "alice")
    assert third not in whole_feed(cs.client)
    expect(page.locator('[data-counter="decided_today_me"]')).to_have_text("3")
    expect(page.locator('[data-counter="pending"]')).to_have_text("1")

    # The admin sees the escalated item first, and decides it with a button.
    actx, apage = login(chromium, cs.url, cs.keys["root"])
    expect(apage.locator('[data-counter="escalated"]')).to_have_text("1")
    expect(apage.locator('[data-counter="decided_today_all"]')).to_have_text("3")
    apage.click('.claim-form [data-action="claim"]')
    expect(apage.locator("li.row")).to_have_count(1)  # the other pending item is alice's, under her claim
    assert shown_id(apage) == third
    expect(shown(apage).locator(".tag-escalated")).to_have_text("escalated")
    expect(apage.locator('.actions [data-action="escalate"]')).to_be_disabled()
    apage.click('.actions [data-action="approve"]')
    expect(apage.locator("li.row")).to_have_count(0)
    row = review(cs, third)
    assert (row.status, row.decided_by) == ("approved", cs.key_ids["root"])
    assert _actions(cs.admin.history(third)) == [("prescreen", "system"), ("claim", "alice"), ("escalate", "alice"),
                                                 ("claim", "root"), ("approve", "root")]
    assert third in whole_feed(cs.client)
    expect(apage.locator('[data-counter="escalated"]')).to_have_text("0")
    actx.close()

    # Logging out ends the session on the server: the old cookie no longer opens anything.
    page.click(".logout button")
    page.wait_for_url(cs.url + "/console/login")
    r = httpx.get(cs.url + "/console/api/counters", cookies={"gq_console": cookie["value"]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "session_expired"
    sessions = list(redis_client(str(cs.stack.broker_url)).scan_iter(match="genqueue:console:session:*"))
    assert len(sessions) == 1  # the admin's (its context closed, but it did not log out); alice's is gone
    ctx.close()


def test_a_wrong_key_gets_a_clear_error(chromium: Any, console_stack: Any) -> None:
    expect, cs = _expect(), console_stack
    ctx = chromium.new_context()
    page = ctx.new_page()
    page.goto(cs.url + "/console")
    page.wait_for_url(cs.url + "/console/login")
    page.fill("#key", "gq_this-is-not-a-key")
    with page.expect_response(cs.url + "/console/login") as answer:
        page.click("button[type=submit]")
    assert answer.value.status == 401
    expect(page.locator(".form-error")).to_contain_text("That key is not valid, or it has been revoked")
    expect(page.locator("#key")).to_have_attribute("aria-invalid", "true")
    page.fill("#key", cs.keys["client"])
    page.click("button[type=submit]")
    expect(page.locator(".form-error")).to_contain_text("This is a client key. The console needs a moderator or admin key.")
    assert "gq_console" not in {c["name"] for c in ctx.cookies()}
    # Without a session, the console's endpoints answer 401 in the API's error shape.
    r = ctx.request.get(cs.url + "/console/api/counters")
    assert r.status == 401 and r.json()["error"]["code"] == "session_expired"
    ctx.close()


def test_a_forged_post_without_the_csrf_token_gets_403_and_changes_nothing(chromium: Any, console_stack: Any) -> None:
    expect, cs = _expect(), console_stack
    drain(cs)
    job = generate(cs, ['<img src=x onerror="document.title=1">The lighthouse keeper'], [])[0]["id"]
    ctx, page = login(chromium, cs.url, cs.keys["alice"])
    page.keyboard.press("c")
    expect(page.locator("li.row")).to_have_count(1)
    # What clients send is shown as text, never as markup.
    expect(shown(page).locator(".prompt")).to_contain_text('<img src=x onerror="document.title=1">')
    assert shown(page).locator(".prompt img").count() == 0

    # The session cookie goes along, as it would with a forged form on another site; the token does not.
    r = ctx.request.post(f"{cs.url}/console/api/items/{job}/decision", form={"decision": "approve"})
    assert r.status == 403 and r.json()["error"]["code"] == "csrf_failed"
    r = ctx.request.post(f"{cs.url}/console/api/items/{job}/decision", data={"decision": "approve"},
                         headers={"X-CSRF-Token": "guessed"})
    assert r.status == 403
    r = ctx.request.post(f"{cs.url}/console/logout", form={"csrf_token": "guessed"})
    assert r.status == 403 and "CSRF" in r.text()
    login_ctx = chromium.new_context()
    r = login_ctx.request.post(f"{cs.url}/console/login", form={"key": cs.keys["alice"]}, max_redirects=0)
    assert r.status == 403 and "gq_console" not in {c["name"] for c in login_ctx.cookies()}
    login_ctx.close()
    assert review(cs, job).status == "pending"
    assert [h["action"] for h in cs.admin.history(job)] == ["prescreen", "claim"]
    assert ctx.request.get(cs.url + "/console/api/counters").status == 200  # still logged in

    page.keyboard.press("a")  # the page's own request carries the token
    expect(page.locator("li.row")).to_have_count(0)
    assert review(cs, job).status == "approved"
    ctx.close()


def test_an_expired_claim_says_so_and_offers_to_claim_again(chromium: Any, console_stack: Any) -> None:
    expect, cs = _expect(), console_stack
    drain(cs)
    job = generate(cs, ["The old clock"], [])[0]["id"]
    ctx, page = login(chromium, cs.url, cs.keys["alice"])
    page.keyboard.press("c")
    expect(page.locator("li.row")).to_have_count(1)
    with cs.db.session() as s:  # the lease runs out while the moderator looks at the item
        s.execute(update(Review).where(Review.job_id == job).values(
            claim_expires_at=utcnow() - dt.timedelta(seconds=1)))
        s.commit()

    page.keyboard.press("a")
    expect(shown(page).locator("[data-expired]")).to_be_visible()
    expect(shown(page).locator("[data-expired]")).to_contain_text("Your claim on this item ran out")
    expect(page.locator("#notice")).to_contain_text(f"your claim on job {job} expired")
    expect(page.locator('.actions [data-action="approve"]')).to_be_disabled()
    assert review(cs, job).status == "pending"

    shown(page).locator('[data-action="reclaim"]').click()
    expect(page.locator("li.row")).to_have_count(1)
    expect(shown(page).locator("[data-expired]")).to_be_hidden()
    assert shown_id(page) == job
    page.keyboard.press("a")
    expect(page.locator("li.row")).to_have_count(0)
    assert review(cs, job).status == "approved"
    assert [h["action"] for h in cs.admin.history(job)] == ["prescreen", "claim", "expire", "claim", "approve"]
    ctx.close()


def test_extend_and_release_buttons(chromium: Any, console_stack: Any) -> None:
    expect, cs = _expect(), console_stack
    drain(cs)
    generate(cs, ["The baker", "The fisher"], [])
    ctx, page = login(chromium, cs.url, cs.keys["alice"])
    page.click('.claim-form [data-action="claim"]')
    expect(page.locator("li.row")).to_have_count(2)
    job = shown_id(page)
    before = review(cs, job).claim_expires_at
    page.click('.actions [data-action="renew"]')
    expect(page.locator("#notice")).to_contain_text("Claim extended")
    after = review(cs, job).claim_expires_at
    assert before is not None and after is not None and after > before
    page.click('.actions [data-action="release"]')
    expect(page.locator("li.row")).to_have_count(1)
    assert shown_id(page) != job
    row = review(cs, job)
    assert (row.status, row.claimed_by) == ("pending", None)
    assert [h["action"] for h in cs.admin.history(job)] == ["prescreen", "claim", "renew", "release"]
    expect(page.locator('[data-counter="pending"]')).to_have_text("2")
    ctx.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_console_reads_well_in_both_themes_from_1024_to_1280_px(chromium: Any, console_stack: Any, scheme: str,
                                                                    tmp_path: Path) -> None:
    expect, cs = _expect(), console_stack
    drain(cs)
    generate(cs, [*TEXT_PROMPTS, "A song for the little tree"], [7, 2])
    ctx, page = login(chromium, cs.url, cs.keys["alice"], color_scheme=scheme)
    page.keyboard.press("c")
    expect(page.locator("li.row")).to_have_count(6)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == ("rgb(244, 245, 247)" if scheme == "light" else "rgb(14, 17, 22)")

    # Images: small ones are scaled up by a whole factor, pixelated, at their final size from the start.
    page.locator("li.row", has_text="images").first.locator("button").click()
    img = shown(page).locator("img").first
    expect(img).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    natural, shown_px, rendering = img.evaluate(
        "i => [i.naturalWidth, i.getBoundingClientRect().width, getComputedStyle(i).imageRendering]")
    assert natural == 32 and shown_px % natural == 0 and shown_px >= 4 * natural and rendering == "pixelated"
    expect(shown(page).locator(".prompt-image")).to_contain_text("class")

    for width in (1024, 1280):
        page.set_viewport_size({"width": width, "height": 800})
        for row in page.locator("li.row").all():  # every item, text and images
            row.locator("button").click()
            assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), width
            for button in page.locator(".actions button").all():
                box = button.bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (width, button.inner_text())
            result = page.evaluate(CONTRAST_JS)
            assert result["checked"] > 30 and result["failures"] == [], (scheme, width, result["failures"])

    # The screenshot: a flagged text item in the light theme, images in the dark one.
    page.set_viewport_size({"width": 1280, "height": 800})
    pick = page.locator("li.row", has=page.locator(".tag-flag")).first if scheme == "light" else \
        page.locator("li.row", has_text="images").first
    if scheme == "light" and not page.locator("li.row .tag-flag").count():
        pick = page.locator("li.row").first
    pick.locator("button").click()
    if page.locator("#notice").is_visible():
        page.click(".notice-close")
    page.mouse.move(0, 0)
    shot = tmp_path / f"console-{scheme}.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("GENQUEUE_CONSOLE_SCREENSHOTS"):  # e.g. `docs`, to refresh the README's pictures
        shutil.copy(shot, Path(os.environ["GENQUEUE_CONSOLE_SCREENSHOTS"]) / shot.name)
    ctx.close()
