"""The page frame: one inline stylesheet, one inline script, no asset from elsewhere.
Every value put into a page goes through :func:`e`."""

from __future__ import annotations

import html
from datetime import datetime

from dispatcher.domain.states import JobState


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def when(at: datetime | None, now: datetime) -> str:
    """A UTC time with its age, e.g. '12:03:04 (5s ago)'; the full date in a tooltip."""
    if at is None:
        return '<span class="muted">—</span>'
    delta = (now - at).total_seconds()
    age = f"{_span(delta)} ago" if delta >= 0 else f"in {_span(-delta)}"
    full = at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{e(at.isoformat())}" title="{e(full)}">{e(full[5:19])} ({age})</time>'


def _span(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def state_badge(state: JobState | str | None) -> str:
    if state is None:
        return ""
    name = state.value if isinstance(state, JobState) else str(state)
    return f'<span class="state s-{e(name)}">{e(name)}</span>'


STYLE = """
:root { color-scheme: light; --fg:#1d232b; --muted:#6a7280; --line:#e2e5ea; --bg:#f6f7f9; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { background:#1d2a3a; color:#fff; padding:10px 24px; display:flex; gap:24px;
  align-items:baseline; }
header h1 { font-size:17px; margin:0; font-weight:600; }
header a { color:#cfe0f5; text-decoration:none; }
header .live { margin-left:auto; font-size:12px; color:#9fb3c8; }
header .live.lost { color:#ffb4a8; }
main { padding: 16px 24px 40px; max-width: 1400px; }
section { background:#fff; border:1px solid var(--line); border-radius:6px;
  padding: 12px 16px; margin-bottom: 16px; }
h2 { font-size:15px; margin: 0 0 10px; }
h2 small { font-weight: normal; color: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align:left; padding: 5px 8px; border-bottom:1px solid var(--line);
  vertical-align: top; }
th { font-size:12px; text-transform: uppercase; letter-spacing: .03em; color: var(--muted);
  font-weight:600; }
tbody tr:hover { background:#f3f6fa; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-size: 12.5px; }
pre.logtail { background:#111820; color:#d8e1ea; padding:10px 12px; border-radius:4px;
  max-height: 360px; overflow:auto; white-space: pre-wrap; margin: 4px 0 0; }
a { color:#1f5fa8; }
.muted { color: var(--muted); }
.state { display:inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight:600; letter-spacing:.02em; border:1px solid transparent; white-space:nowrap; }
.s-NOTICED { background:#eef0f3; color:#4b5563; border-color:#d5d9df; }
.s-QUEUED { background:#e6f0fb; color:#1f5fa8; border-color:#bcd4f0; }
.s-BUILDING { background:#fff4d6; color:#8a5a00; border-color:#f1d58a; }
.s-SUCCEEDED { background:#e3f6e8; color:#1d6b34; border-color:#b5e2c2; }
.s-FAILED { background:#fde8e6; color:#a3261a; border-color:#f5c2bc; }
.s-IRRECOVERABLE { background:#5b1a14; color:#fff; }
.s-CANCELLED { background:#f1eaf7; color:#5d3a84; border-color:#dccbee; }
.s-NOT_FOR_US { background:#fff; color:#6a7280; border-color:#c9ced6; border-style:dashed; }
.s-LOST { background:#fde8e6; color:#a3261a; border-color:#f5c2bc; border-style:dashed; }
.s-running { background:#fff4d6; color:#8a5a00; border-color:#f1d58a; }
.s-ONLINE { background:#e3f6e8; color:#1d6b34; }
.s-DRAINING { background:#fff4d6; color:#8a5a00; }
.s-OFFLINE { background:#eef0f3; color:#6a7280; }
.counts { display:flex; flex-wrap:wrap; gap:10px; }
.counts a { text-decoration:none; color:inherit; border:1px solid var(--line);
  border-radius:6px; padding:6px 12px; background:#fff; min-width: 110px; }
.counts a.on { outline: 2px solid #1f5fa8; }
.counts b { display:block; font-size:20px; font-variant-numeric: tabular-nums; }
form.filters { display:flex; gap:10px; align-items:center; margin-bottom:10px; }
form.filters input, form.filters select { font: inherit; padding:3px 6px; }
.placeholder { border: 1px dashed #c9ced6; background: #fafbfc; color: var(--muted); }
.pager { margin-top: 8px; display:flex; gap:16px; }
dl.fields { display:grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin:0; }
dl.fields dt { color: var(--muted); }
dl.fields dd { margin:0; }
.narrow { max-width: 480px; }
"""

# Short polling: every few seconds fetch the same URL with partial=1 and swap the live
# part in place. Paused while the tab is hidden; says so when the server is unreachable.
SCRIPT = """
(function () {
  var live = document.getElementById("live");
  var badge = document.getElementById("live-badge");
  if (!live) return;
  var every = 2000;
  function tick() {
    if (document.hidden) { setTimeout(tick, every); return; }
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    fetch(url, {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (text) {
      if (text !== live.dataset.last) { live.innerHTML = text; live.dataset.last = text; }
      badge.textContent = "live · updated " + new Date().toLocaleTimeString();
      badge.className = "live";
    }).catch(function (err) {
      badge.textContent = "not updating: " + err.message;
      badge.className = "live lost";
    }).finally(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
"""

LOGIN_SCRIPT = """
document.getElementById("token-form").addEventListener("submit", function (ev) {
  ev.preventDefault();
  var token = document.getElementById("token").value.trim();
  document.cookie = "dispatcher_admin_token=" + encodeURIComponent(token) +
    "; path=/; SameSite=Strict" + (location.protocol === "https:" ? "; Secure" : "");
  location.reload();
});
"""


def page(title: str, body: str, *, nonce: str, live: bool = True) -> str:
    """A whole page. With ``live``, ``body`` is the part that updates in place."""
    content = f'<div id="live">{body}</div>' if live else body
    script = f'<script nonce="{e(nonce)}">{SCRIPT}</script>' if live else ""
    badge = '<span id="live-badge" class="live">live</span>' if live else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · dispatcher</title>
<style nonce="{e(nonce)}">{STYLE}</style>
</head>
<body>
<header><h1><a href="/">dispatcher</a></h1><a href="/">jobs &amp; runners</a>
<a href="/metrics">metrics</a>{badge}</header>
<main>{content}</main>
{script}
</body>
</html>
"""


def login_page(*, nonce: str, failed: bool) -> str:
    note = (
        '<p class="muted">That token was not accepted.</p>'
        if failed
        else '<p class="muted">This page needs an admin token.</p>'
    )
    body = f"""<section class="narrow">
<h2>Admin token</h2>{note}
<form id="token-form" autocomplete="off">
<input id="token" type="password" size="40" aria-label="admin token" autofocus>
<button type="submit">Use token</button>
</form>
<p class="muted">Kept in a cookie of this browser; the page itself changes nothing.</p>
</section>
<script nonce="{e(nonce)}">{LOGIN_SCRIPT}</script>"""
    return page("sign in", body, nonce=nonce, live=False)
