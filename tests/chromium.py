"""The real browser the page tests drive: Debian's chromium through Playwright (which
never downloads a browser of its own), and the songs the review page tests serve."""

from __future__ import annotations

import contextlib
from pathlib import Path

from playwright.sync_api import sync_playwright

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SONGS = [  # file, title, artist, top-3
    ("Incoming/Night Drive.mp3", "Night Drive", "The Lanterns",
     (("Electronic", 0.93), ("Pop", 0.05), ("Rock", 0.02))),
    ("Incoming/Blue Porch.flac", "Blue Porch", "Delta Ray",
     (("Blues", 0.91), ("Jazz", 0.06), ("Country", 0.03))),
    ("Donations/Fast Lane.ogg", "Fast Lane", "Iron Kettle",
     (("Rock", 0.55), ("Metal", 0.41), ("Pop", 0.04))),
    ("Donations/Late Set.m4a", "Late Set", "Quartet Nine",
     (("Jazz", 0.47), ("Classical", 0.33), ("Blues", 0.2))),
    ("Donations/Morning.opus", "Morning", "Ana Lee",
     (("Folk", 0.38), ("Country", 0.35), ("Pop", 0.27))),
]


@contextlib.contextmanager
def browser_page(**context):
    """A page of Debian's chromium (`context`: Playwright's new_context arguments, a
    1280 x 900 window unless told); on leaving, no script error may have happened."""
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_context(**{"viewport": {"width": 1280, "height": 900},
                                      **context}).new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        yield page
        browser.close()
    assert not errors, errors  # no script errors, no CSP violations
