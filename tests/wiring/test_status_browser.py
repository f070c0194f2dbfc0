"""/status in a real browser (headless Chromium): a daemon signs and verifies a valid, a
tampered and a stale call (and a hostile unsigned one); the rendered page has its charts
and its calls table shows those calls, the hostile From as inert text; a screenshot is
saved (``STIRD_STATUS_SCREENSHOT=path`` keeps a copy, e.g. docs/status.png)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

from stird.wiring.app import Daemon
from stird.wiring.config import Config, HostPort
from tests.peers import require_peer
from tests.wiring.status_calls import drive

BROWSER_TIMEOUT = 90.0  # s for one headless Chromium run (a bounded wait, not a speed claim)
PNG = b"\x89PNG\r\n\x1a\n"


async def chromium(browser: str, profile: Path, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
    return out


async def test_status_page_in_headless_chromium(tmp_path: Path) -> None:
    browser = require_peer("chromium")
    server = replace(Config().server, http=HostPort("127.0.0.1", 0), jsonrpc=None, agi=None,
                     state_dir=tmp_path / "state")  # fmt: skip
    daemon = Daemon(Config(server=server))
    await daemon.start()
    try:
        base = "http://{}:{}".format(*daemon.http_address)
        calls = await drive(base, server.state_dir)
        dom = (await chromium(browser, tmp_path / "p1", "--dump-dom", f"{base}/status")).decode()
        shot = tmp_path / "status.png"
        await chromium(browser, tmp_path / "p2", f"--screenshot={shot}",
                       "--window-size=1280,1200", f"{base}/status")  # fmt: skip
    finally:
        await daemon.stop()
    # the charts: two SVGs with bars
    assert len(re.findall(r"<svg\b", dom)) == 2 and "<rect" in dom
    # the calls table: a row per call, with its verdict and reason
    rows = re.findall(r'<tr class="call">(.*?)</tr>', dom, re.S)
    for call_id, shows in ((calls.valid, "valid"), (calls.tampered, "Invalid Identity Header"),
                           (calls.stale, "Stale Date"), (calls.hostile, "no-identity")):  # fmt: skip
        (row,) = [r for r in rows if call_id in r and "in</td>" in r]
        assert shows in row
    # the hostile From is text in the DOM, never an element
    assert "<script" not in dom and "<img" not in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    data = shot.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000
    keep = os.environ.get("STIRD_STATUS_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
