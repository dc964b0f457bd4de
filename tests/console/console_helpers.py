"""Helpers of the console's browser tests: real content, a clean review queue, logging in, reading the page."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from genqueue.db.models import Review
from genqueue.enums import ReviewStatus

VIEWPORT = {"width": 1280, "height": 800}

TEXT_PROMPTS = ["The little garden", "Once upon a time", "The moon over the sea"]


def generate(cs: Any, prompts: list[str], image_classes: list[int]) -> list[dict[str, Any]]:
    """Real jobs through the API and the worker, each kept for review; returns them once they succeeded."""
    jobs = [cs.client.submit("tiny-lm", {"prompt": p, "max_new_tokens": 48, "temperature": 0.8, "seed": 11 + i},
                             review="required") for i, p in enumerate(prompts)]
    jobs += [cs.client.submit("dcgan-digits", {"class_label": c, "num_images": 4, "seed": 5 + c}, review="required")
             for c in image_classes]
    done = [cs.client.wait(j["id"], timeout=120) for j in jobs]
    for job in done:
        assert job["status"] == "succeeded", job
        assert job["review"]["status"] == "pending", job
    return done


def drain(cs: Any) -> None:
    """Decides whatever earlier tests left waiting (admins may decide any item), so that a test's claims
    see only its own items."""
    with cs.db.session() as s:
        ids = list(s.execute(select(Review.job_id).where(
            Review.status.in_([ReviewStatus.pending.value, ReviewStatus.escalated.value]))).scalars())
    for i in range(0, len(ids), 500):
        r = httpx.post(f"{cs.url}/v1/review/bulk-decision", json={"job_ids": ids[i:i + 500], "decision": "approve"},
                       headers={"Authorization": f"Bearer {cs.keys['root']}"}, timeout=60)
        assert r.status_code == 200, r.text
        assert all(item["ok"] for item in r.json()["data"]), r.text


def review(cs: Any, job_id: str) -> Review:
    with cs.db.session() as s:
        row = s.get(Review, job_id)
        assert row is not None
        s.expunge(row)
        return row


def whole_feed(c: Any) -> dict[str, dict[str, Any]]:
    items, cursor = {}, None
    while True:
        page = c.feed(after=cursor, limit=1000)
        items.update({i["job_id"]: i for i in page["data"]})
        if not page["data"]:
            return items
        cursor = page["next_cursor"]


def login(browser: Any, url: str, key: str, color_scheme: str = "light", viewport: dict[str, int] | None = None
          ) -> tuple[Any, Any]:
    """A browser context of its own (its own cookies), logged in through the form; returns (context, page)."""
    context = browser.new_context(color_scheme=color_scheme, viewport=viewport or VIEWPORT)
    page = context.new_page()
    page.goto(url + "/console")
    assert page.url.endswith("/console/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/console")
    page.wait_for_selector(".topbar")
    return context, page


def shown(page: Any) -> Any:
    return page.locator("article.item:not([hidden])")


def shown_id(page: Any) -> str:
    return str(shown(page).get_attribute("data-job-id"))


# Every visible text on the page against its effective background: WCAG AA asks 4.5:1 (3:1 for large text).
# Disabled controls are exempt (WCAG 1.4.3), as is text with no text of its own.
CONTRAST_JS = """
() => {
  const parse = (c) => { const m = c.match(/[\\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const lum = (c) => 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
  const blend = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat([1]);
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const bg = parse(getComputedStyle(e).backgroundColor);
      if (bg[3] > 0) layers.push(bg);
      if (bg[3] >= 1) break;
    }
    let color = parse(getComputedStyle(document.documentElement).backgroundColor);
    if (color[3] === 0) color = matchMedia("(prefers-color-scheme: dark)").matches ? [0, 0, 0, 1] : [255, 255, 255, 1];
    for (const layer of layers.reverse()) color = blend(layer, color);
    return color;
  };
  const failures = [];
  let checked = 0;
  for (const el of document.querySelectorAll("body *")) {
    const own = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length || el.closest("[hidden], :disabled, dialog:not([open])")) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden") continue;
    const bg = background(el);
    const fg = blend(parse(style.color), bg);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    checked += 1;
    if (ratio < (large ? 3 : 4.5)) failures.push(`${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
  }
  return {checked, failures};
}
"""
