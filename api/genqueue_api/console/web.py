"""Rendering: the Jinja2 environment (autoescaping on, so model output can never become markup), the
template helpers, and the security headers every console answer carries."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from genqueue import __version__
from genqueue.review.schemas import ReviewItem
from genqueue_api.console.service import Shown
from genqueue_api.console.store import Counters

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))

# The page loads nothing from elsewhere and runs no inline script, so a strict policy costs nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# What each pre-screen rule means, in a moderator's words (worker/genqueue_worker/prescreen.py).
FLAG_TEXT = {
    "blocklist": "contains a blocked word or phrase",
    "repetition": "repeats itself",
    "empty_output": "is empty",
    "pii_email": "contains an email address",
    "pii_phone": "contains a phone number",
    "url": "contains a link",
    "blank_image": "an image is (nearly) blank",
}

# Small images (the demo GAN's 32 x 32 digits) are scaled up by whole factors with pixelated rendering, to
# about this many CSS pixels on their longer side (a lone image larger, so that its detail shows; several
# smaller, so that a job's images fit side by side); large images are shown at most this wide.
IMAGE_TARGET_PX = 224
IMAGE_TARGET_MANY_PX = 144


def _static_version() -> str:
    """A digest of the static files: their URLs change whenever they do, so browsers never run stale JS."""
    h = hashlib.sha256(__version__.encode())
    for f in sorted(STATIC.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:10]


STATIC_VERSION = _static_version()


def image_box(width: int, height: int, count: int = 1) -> dict[str, Any]:
    """The displayed size of an image: a whole-number upscale for small ones (crisp pixels), a downscale
    for large ones, never a fractional blur of pixel art."""
    target = IMAGE_TARGET_PX if count <= 1 else IMAGE_TARGET_MANY_PX
    longest = max(width, height, 1)
    if longest <= target:
        scale = max(1, target // longest)
        return {"width": width * scale, "height": height * scale, "scale": scale, "pixelated": scale > 1}
    f = target / longest
    return {"width": math.floor(width * f), "height": math.floor(height * f), "scale": f, "pixelated": False}


def when(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else ""


def clock(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%H:%M:%S") if t else ""


def iso(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).isoformat() if t else ""


def image_url(item: ReviewItem, index: int) -> str:
    return f"/console/images/{item.job_id}/{index}"


templates.env.globals.update(FLAG_TEXT=FLAG_TEXT, image_box=image_box, image_url=image_url, static_version=STATIC_VERSION)
templates.env.filters.update(when=when, clock=clock, iso=iso)


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def fragment(name: str, **context: Any) -> str:
    return templates.env.get_template(name).render(**context)


def counters_json(c: Counters) -> dict[str, int]:
    return {"pending": c.pending, "flagged": c.flagged, "escalated": c.escalated,
            "decided_today_me": c.decided_today_me, "decided_today_all": c.decided_today_all}


def shown_json(s: Shown) -> dict[str, Any]:
    """An item for the page's script: its status and claim, and its markup (rendered here, escaped)."""
    return {"job_id": s.item.job_id, "status": s.item.status.value, "claim_expires_at": iso(s.item.claim_expires_at),
            "html": fragment("_item.html", s=s), "row": fragment("_row.html", s=s)}
