"""The status page's parts, rendered from lifecycle values. Read-only: no form here
sends anything but a GET."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode

from dispatcher.domain.model import (
    Execution,
    Explanation,
    Job,
    JobEvent,
    JobFilter,
    Page,
    Pressure,
)
from dispatcher.domain.states import JobState
from dispatcher.lifecycle.status import Overview, RunnerView
from dispatcher.web.html import e, state_badge, when


def job_link(job_id: int | None) -> str:
    if job_id is None:
        return ""
    return f'<a href="/jobs/{job_id}">{job_id}</a>'


def _query(**params: str) -> str:
    kept = {k: v for k, v in params.items() if v}
    return "?" + urlencode(kept) if kept else "?"


def counts_bar(overview: Overview, flt: JobFilter) -> str:
    chosen = {s.value for s in flt.states}
    cells = []
    for state, count in overview.counts.jobs.items():
        on = " on" if state.value in chosen else ""
        href = _query(state=state.value, queue=flt.queue)
        cells.append(
            f'<a class="count{on}" id="count-{state.value}" href="{e(href)}">'
            f"{state_badge(state)}<b>{count}</b></a>"
        )
    total = sum(overview.counts.jobs.values())
    href = _query(queue=flt.queue)
    cells.append(
        f'<a class="count" href="{e(href)}"><span class="muted">all</span><b>{total}</b></a>'
    )
    return f'<section><div class="counts">{"".join(cells)}</div></section>'


def flavors_table(pressures: tuple[Pressure, ...]) -> str:
    if not pressures:
        rows = (
            '<tr><td colspan="5" class="muted">No flavors: '
            "<code>dispatcher flavors add NAME</code> adds one.</td></tr>"
        )
    else:
        rows = "".join(
            f'<tr id="flavor-{e(p.flavor)}"><td class="mono">{e(p.flavor)}</td>'
            f"<td><code>{e(p.platform)}</code></td>"
            f'<td class="num">{p.value}</td><td class="num">{p.unfinished}</td>'
            f"<td>{'yes' if p.enabled else '<span class=muted>disabled</span>'}</td></tr>"
            for p in pressures
        )
    return f"""<section id="flavors"><h2>Flavors / pressure <small>{len(pressures)}</small></h2>
<table><thead><tr><th>flavor</th><th>platform</th><th class="num">pressure</th>
<th class="num">unfinished</th><th>enabled</th></tr></thead><tbody>{rows}</tbody></table>
</section>"""


def runners_table(views: tuple[RunnerView, ...], now: datetime) -> str:
    if not views:
        rows = '<tr><td colspan="7" class="muted">No runner has connected yet.</td></tr>'
    else:
        rows = "".join(_runner_row(v, now) for v in views)
    return f"""<section id="runners"><h2>Runners <small>{len(views)}</small></h2>
<table><thead><tr><th>name</th><th>state</th><th>platform</th><th>labels</th>
<th class="num">busy / capacity</th><th>holds</th><th>last heartbeat</th>
</tr></thead><tbody>{rows}</tbody></table></section>"""


def _runner_row(view: RunnerView, now: datetime) -> str:
    r = view.runner
    labels = " ".join(f"<code>{e(label)}</code>" for label in sorted(r.labels))
    held = ", ".join(
        f"job {job_link(h.job_id)} <span class=muted>(execution {h.execution_id})</span>"
        for h in view.held
    )
    return (
        f'<tr id="runner-{e(r.name)}"><td class="mono">{e(r.name)}</td>'
        f"<td>{state_badge(r.state.value)}</td><td><code>{e(r.platform)}</code></td>"
        f"<td>{labels or '<span class=muted>—</span>'}</td>"
        f'<td class="num">{len(view.held)} / {r.capacity}</td>'
        f"<td>{held or '<span class=muted>—</span>'}</td>"
        f"<td>{when(view.last_heartbeat_at, now)}</td></tr>"
    )


def jobs_table(page: Page, flt: JobFilter, limit: int, now: datetime, older: str) -> str:
    state = next(iter(flt.states)).value if len(flt.states) == 1 else ""
    options = "".join(
        f'<option value="{s.value}"{" selected" if s.value == state else ""}>{s.value}</option>'
        for s in JobState
    )
    if page.jobs:
        rows = "".join(_job_row(job, now) for job in page.jobs)
    else:
        rows = '<tr><td colspan="8" class="muted">No jobs match.</td></tr>'
    pager = [f'<a href="{e(_query(state=state, queue=flt.queue, flavor=flt.flavor))}">newest</a>']
    if older:
        href = _query(
            state=state, queue=flt.queue, flavor=flt.flavor, before=older, limit=str(limit)
        )
        pager.append(f'<a id="older" href="{e(href)}">older →</a>')
    return f"""<section id="jobs"><h2>Jobs <small>newest first</small></h2>
<form class="filters" method="get" action="/">
<label>state <select name="state"><option value="">any</option>{options}</select></label>
<label>queue <input name="queue" value="{e(flt.queue)}" size="16"></label>
<label>flavor <input name="flavor" value="{e(flt.flavor)}" size="16"></label>
<button type="submit">Filter</button></form>
<table><thead><tr><th class="num">id</th><th>state</th><th>queue</th><th>platform</th>
<th>runner</th><th class="num">attempt</th><th>created</th><th>info</th></tr></thead>
<tbody>{rows}</tbody></table>
<div class="pager">{" ".join(pager)}</div></section>"""


def _job_row(job: Job, now: datetime) -> str:
    info = e(_short(job.info))
    if job.state is JobState.NOTICED and job.spec.not_before is not None and not job.info:
        info = f"due {when(job.spec.not_before, now)}"
    return (
        f'<tr id="job-{job.id}" data-state="{job.state.value}">'
        f'<td class="num">{job_link(job.id)}</td><td>{state_badge(job.state)}</td>'
        f"<td>{e(job.spec.queue)}</td><td><code>{e(job.spec.platform)}</code></td>"
        f'<td class="mono">{e(job.runner)}</td><td class="num">{job.attempt}</td>'
        f"<td>{when(job.created_at, now)}</td><td>{info}</td></tr>"
    )


def events_table(events: tuple[JobEvent, ...], now: datetime, *, with_job: bool) -> str:
    head = '<th class="num">job</th>' if with_job else ""
    rows = []
    for ev in events:
        moved = ""
        if ev.to_state is not None:
            moved = f"{state_badge(ev.from_state)} → {state_badge(ev.to_state)}"
        job = f'<td class="num">{job_link(ev.job_id)}</td>' if with_job else ""
        rows.append(
            f'<tr id="event-{ev.id}"><td>{when(ev.at, now)}</td>{job}<td>{e(ev.kind)}</td>'
            f"<td>{moved}</td><td class='mono'>{e(ev.actor)}</td>"
            f"<td class='num'>{ev.execution_id or ''}</td><td>{e(ev.cause)}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="7" class="muted">No events yet.</td></tr>'
    return f"""<table><thead><tr><th>when</th>{head}<th>event</th><th>move</th><th>actor</th>
<th class="num">execution</th><th>cause</th></tr></thead><tbody>{body}</tbody></table>"""


def overview_page(
    overview: Overview, page: Page, flt: JobFilter, limit: int, now: datetime, older: str
) -> str:
    return (
        counts_bar(overview, flt)
        + jobs_table(page, flt, limit, now, older)
        + runners_table(overview.runners, now)
        + flavors_table(overview.counts.pressures)
        + '<section id="events"><h2>Recent events</h2>'
        + events_table(overview.events, now, with_job=True)
        + "</section>"
    )


def explain_section(explanation: Explanation | None) -> str:
    """Why a waiting job is not running, as ExplainJob says (SPEC §10)."""
    if explanation is None:
        return ""
    items = "".join(f"<li><code>{e(r.code)}</code> {e(r.text)}</li>" for r in explanation.reasons)
    return f'<section id="explain"><h2>Why it is not running</h2><ul>{items}</ul></section>'


def job_page(job: Job, now: datetime, explanation: Explanation | None = None) -> str:
    spec = job.spec
    fields = [
        ("state", state_badge(job.state)),
        ("info", e(job.info) or '<span class="muted">—</span>'),
        ("queue", e(spec.queue)),
        ("platform", f"<code>{e(spec.platform)}</code>"),
        (
            "labels",
            " ".join(f"<code>{e(x)}</code>" for x in sorted(spec.labels))
            or '<span class="muted">—</span>',
        ),
        ("command", f"<code>{e(' '.join(spec.command))}</code>"),
        ("priority", e(spec.priority)),
        ("on lost", e(spec.on_lost.value)),
        ("attempt", e(job.attempt)),
        ("runner", f'<span class="mono">{e(job.runner)}</span>'),
        ("not before", when(spec.not_before, now)),
        ("created", when(job.created_at, now)),
        ("updated", when(job.updated_at, now)),
        ("finished", when(job.finished_at, now)),
    ]
    if job.duplicate_of:
        fields.append(("duplicate of", job_link(job.duplicate_of)))
    if job.cancel_requested:
        fields.append(("cancel", "requested; waiting for the runner"))
    optional = [
        ("flavor", job.flavor),
        ("schedule", job.schedule),
        ("subject", f"{spec.subject}/{spec.process}" if spec.subject else ""),
        ("dedupe key", spec.dedupe_key),
        ("coalesce keys", " ".join(sorted(spec.coalesce_keys))),
        ("failures", f"{job.failures} of {spec.retry.max_attempts}" if job.failures else ""),
        ("losses", f"{job.losses} of {spec.retry.max_lost}" if job.losses else ""),
    ]
    fields += [(name, e(value)) for name, value in optional if value]
    dl = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in fields)
    executions = "".join(_execution_block(x, now) for x in reversed(job.executions))
    return f"""<section><h2>Job {job.id}</h2><dl class="fields" id="job-fields">{dl}</dl>
</section>
{explain_section(explanation)}
<section id="executions"><h2>Executions <small>{len(job.executions)}</small></h2>
{executions or '<p class="muted">None yet.</p>'}</section>
<section id="history"><h2>History</h2>{events_table(job.events, now, with_job=False)}</section>"""


def _execution_block(x: Execution, now: datetime) -> str:
    outcome = (
        state_badge(x.outcome.value)
        if x.outcome
        else '<span class="state s-running">running</span>'
    )
    tail = f'<pre class="logtail">{e(x.logtail)}</pre>' if x.logtail else ""
    return f"""<div class="execution" id="execution-{x.id}">
<table><thead><tr><th class="num">#</th><th class="num">execution</th><th>runner</th>
<th>started</th><th>last heartbeat</th><th>commit point</th><th>finished</th><th>outcome</th>
<th>info</th></tr></thead><tbody><tr><td class="num">{x.number}</td>
<td class="num">{x.id}</td><td class="mono">{e(x.runner)}</td><td>{when(x.started_at, now)}</td>
<td>{when(x.last_heartbeat_at, now)}</td><td>{when(x.committed_at, now)}</td>
<td>{when(x.finished_at, now)}</td><td>{outcome}</td><td>{e(x.info)}</td></tr></tbody></table>
{tail}</div>"""


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
