"""The operator's dashboard: every resource of the deployment, its state and what to do.

Routes (all behind the token or a session cookie, :mod:`calsync.web.auth`):

* ``GET /dashboard/``: the header figures and the table
  of resources, sortable and filterable in the page; ``GET /dashboard/resources/{id}``:
  one resource, its timeline and lag chart. Both pages refresh themselves by polling
  ``GET /dashboard/api/fleet`` / ``.../api/resources/{id}`` (JSON with the same
  figures and the server-rendered fragments the script swaps in): one rendering, in
  Python.
* ``POST /dashboard/resources/{id}/{resync|pause|resume|remove}`` and
  ``POST /dashboard/deadletters/replay`` (admin only, with the session's CSRF token):
  the same commands as the admin API and the CLI.
* ``POST /login`` (a token → an HttpOnly, SameSite=Strict session cookie; the form is
  what any page answers a browser without credentials, with its 401), ``POST /logout``.
* ``GET /dashboard/static/{name}``: the page's script and style, from the package.

Nothing here shows event titles, attendees or other calendar contents: calsync never
stores them. The calendar id is what the operator registered.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Awaitable, Callable
from importlib import resources as package_files
from typing import Any
from urllib.parse import quote

from aiohttp import web

from calsync.streams.records import CommandKind
from calsync.web.auth import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_KEY,
    Role,
    Session,
    SessionSigner,
    login_page,
    role_of,
)
from calsync.web.fleet import Fleet, ResourceView

SendCommand = Callable[[CommandKind, str], Awaitable[None]]
Replay = Callable[[], Awaitable[int]]

_ACTIONS = {
    "resync": CommandKind.RESYNC,
    "pause": CommandKind.PAUSE,
    "resume": CommandKind.RESUME,
    "remove": CommandKind.REMOVE,
}
_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_CREDENTIAL_WORDS = {
    "ok": "ok",
    "refreshing": "refreshing (token endpoint failing, retrying)",
    "reauth_required": "needs reconnecting",
}
_STATE_WORDS = {
    "ok": "in sync",
    "pending": "first sync pending",
    "failing": "failing, retrying",
    "reauth_required": "needs reconnecting",
    "paused": "paused",
    "removed": "removed",
}


def credential_words(credential: str) -> str:
    """What a resource's credential state means to a person."""
    return _CREDENTIAL_WORDS.get(credential, credential)


def span(seconds: float | None) -> str:
    """A duration as people read it: 12s, 4m 03s, 6h 02m, 3d 4h."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    return f"{sign}{minutes}m {secs:02d}s"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ago(at: float | None, now: float) -> str:
    return f"{span(now - at)} ago" if at else "never"


def _until(at: float | None, now: float) -> str:
    if not at:
        return "—"
    return f"in {span(at - now)}" if at >= now else f"{span(now - at)} ago"


def _push(view: ResourceView, now: float) -> str:
    if view.push == "poll":
        every = f" every {span(view.poll_interval)}" if view.poll_interval else ""
        return f"polled{every}"
    if view.subscription_lost:
        return f"{view.push} lost"
    if view.channel_expires_at:
        return f"{view.push}, expires {_until(view.channel_expires_at, now)}"
    return f"{view.push or '—'}, not yet set up"


def _badge(state: str) -> str:
    words = _STATE_WORDS.get(state, state)
    return f'<span class="state state-{_e(state)}">{_e(words)}</span>'


def resource_row(view: ResourceView, now: float) -> str:
    """One ``<tr>`` of the resource table (data attributes drive sorting and filters)."""
    error = view.errors[-1] if view.errors else None
    error_cell = (
        f'<span class="cause">{_e(error["cause"])}</span> '
        f'<span class="todo">{_e(error["action"])}</span>'
        if error
        else ""
    )
    retries = str(view.retries) if view.retries else "0"
    if view.next_retry_at:
        retries += f", next {_until(view.next_retry_at, now)}"
    href = f"/dashboard/resources/{quote(view.resource_id, safe='')}"
    age = now - view.synced_at if view.synced_at else 1e12
    cells = [
        ("resource", f'<a href="{_e(href)}">{_e(view.resource_id)}</a>'),
        ("provider", _e(view.provider)),
        ("calendar", _e(view.calendar_id)),
        ("state", _badge(view.state)),
        ("last sync", _e(_ago(view.synced_at, now))),
        ("lag", _e(f"{view.lag_ms / 1000:.2f}s" if view.lag_ms is not None else "—")),
        ("push", _e(_push(view, now))),
        ("credentials", _e(credential_words(view.credential))),
        ("retries", _e(retries)),
        ("quarantined", str(view.quarantined)),
        ("last error", error_cell),
        ("worker", _e(view.worker or "—")),
    ]
    tds = "".join(f'<td data-label="{name}">{value}</td>' for name, value in cells)
    return (
        f'<tr data-id="{_e(view.resource_id)}" data-provider="{_e(view.provider)}" '
        f'data-state="{_e(view.state)}" data-problem="{int(view.problem)}" '
        f'data-age="{age:.0f}" data-lag="{view.lag_ms or 0}" data-retries="{view.retries}" '
        f'data-synced="{view.synced_at or 0:.3f}">'
        f"{tds}</tr>"
    )


def header_html(figures: dict[str, Any]) -> str:
    """The deployment's figures above the table."""
    states = ", ".join(
        f'<span class="state state-{_e(s)}">{_e(_STATE_WORDS.get(s, s))}: {n}</span>'
        for s, n in sorted(figures["states"].items())
    )
    buckets = (
        "".join(
            f"<li>{_e(name)}: {float(b.get('tokens', 0)):.0f} tokens"
            f"{', held ' + span(float(b['held_for'])) if b.get('held_for') else ''}</li>"
            for name, b in sorted(figures["rate_limits"].items())
        )
        or "<li>none</li>"
    )
    lag = (
        "".join(f"<li>{_e(tp)}: {n}</li>" for tp, n in figures["consumer_lag"].items())
        or "<li>none</li>"
    )
    workers = (
        "".join(
            f'<li class="{"silent" if w["silent"] else ""}">{_e(w["name"])}: partitions '
            f"{_e(', '.join(str(p) for p in w['partitions']) or 'none')} · "
            f"{w['resources']} resources"
            f"{', silent ' + span(w['heard_ago']) if w['silent'] else ''}</li>"
            for w in figures["workers"]
        )
        or "<li>no heartbeat yet</li>"
    )
    return (
        f'<div class="figures"><div><h2>Resources</h2><p><b id="total">{figures["resources"]}</b>'
        f" ({figures['problems']} with problems)</p><p>{states or 'none yet'}</p></div>"
        f"<div><h2>Throughput</h2><p>{figures['events_per_second']:.2f} events/s<br>"
        f"{figures['notifications_per_second']:.2f} notifications/s</p></div>"
        f"<div><h2>Rate limits</h2><ul>{buckets}</ul></div>"
        f"<div><h2>Consumer lag</h2><ul>{lag}</ul></div>"
        f'<div><h2>Workers</h2><ul id="workers">{workers}</ul></div></div>'
    )


def lag_chart(points: list[tuple[float, int]], now: float, *, hours: float = 6.0) -> str:
    """An inline SVG line of the lag (seconds) of the last ``hours``."""
    since = now - hours * 3600
    shown = [(at, lag / 1000) for at, lag in points if at >= since]
    if not shown:
        return '<p class="muted">No changes synced in the last hours.</p>'
    width, height, pad = 600.0, 160.0, 24.0
    top = max(lag for _, lag in shown) or 1.0
    xs = [pad + (at - since) / (now - since) * (width - 2 * pad) for at, _ in shown]
    ys = [height - pad - lag / top * (height - 2 * pad) for _, lag in shown]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5"/>' for x, y in zip(xs, ys, strict=True)
    )
    return (
        f'<svg class="chart" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="lag over the last {hours:g} hours, at most {top:.2f}s">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}"/>'
        f'<text x="{pad}" y="14">{top:.2f}s</text>'
        f'<text x="{pad}" y="{height - 6}">{hours:g}h ago</text>'
        f'<text x="{width - pad}" y="{height - 6}" text-anchor="end">now</text>'
        f'<polyline points="{line}"/>{dots}</svg>'
    )


def detail_html(view: ResourceView, now: float) -> str:
    """The body of a resource's page: its row's facts, errors, lag chart and timeline."""
    facts = [
        ("Provider", view.provider),
        ("Calendar", view.calendar_id),
        ("State", _STATE_WORDS.get(view.state, view.state)),
        ("Credentials", credential_words(view.credential)),
        ("Last successful sync", _ago(view.synced_at, now)),
        ("Lag of the last change", f"{view.lag_ms / 1000:.2f}s" if view.lag_ms else "—"),
        ("Push", _push(view, now)),
        ("Retry backlog", f"{view.retries} (next {_until(view.next_retry_at, now)})"),
        ("Quarantined items", str(view.quarantined)),
        ("Owned by", view.worker or "—"),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    errors = "".join(
        f"<li><b>{_e(err['status'])}</b> {_e(_ago(err['at'], now))}: "
        f'<span class="cause">{_e(err["cause"])}</span> '
        f'<span class="todo">What to do: {_e(err["action"])}</span>'
        f"<br><small>{_e(err['detail'])}</small></li>"
        for err in reversed(view.errors)
    )
    timeline = "".join(
        f'<li data-status="{_e(entry["status"])}" data-at="{entry["at"]:.3f}">'
        f"<time>{_e(_ago(entry['at'], now))}</time> "
        f"<b>{_e(entry['status'])}</b> {_e(entry['detail'])}"
        f"{_e(_timeline_data(entry['data']))}</li>"
        for entry in reversed(view.timeline)
    )
    return (
        f'<dl class="facts" data-state="{_e(view.state)}">{dl}</dl>'
        f'<h2>Errors</h2><ul class="errors">{errors or "<li>none</li>"}</ul>'
        f"<h2>Lag, last 6 hours</h2>{lag_chart(list(view.lags), now)}"
        f'<h2>Timeline</h2><ol class="timeline">{timeline or "<li>nothing yet</li>"}</ol>'
    )


def _timeline_data(data: dict[str, Any]) -> str:
    shown = []
    for key in ("reason", "lane", "attempt", "delay", "lag_ms"):
        if key in data:
            shown.append(f"{key} {data[key]}")
    counts = data.get("counts")
    if isinstance(counts, dict):
        shown.append(f"{counts.get('upserts', 0)} upserts, {counts.get('deletes', 0)} deletes")
    return f" ({', '.join(shown)})" if shown else ""


class Dashboard:
    """The dashboard's handlers over a :class:`Fleet` (fed elsewhere, see
    :class:`~calsync.web.fleet.FleetFollower`)."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        signer: SessionSigner,
        send_command: SendCommand,
        replay: Replay,
        ready: Callable[[], Awaitable[None]],
        app_id: str,
        secure_cookie: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self._signer = signer
        self._send = send_command
        self._replay = replay
        self._ready = ready
        self._app_id = app_id
        self._secure = secure_cookie
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/dashboard/", self.page),
            web.get("/dashboard/resources/{resource_id}", self.detail_page),
            web.get("/dashboard/api/fleet", self.fleet_json),
            web.get("/dashboard/api/resources/{resource_id}", self.resource_json),
            web.get("/dashboard/static/{name}", self.static),
            web.post("/dashboard/resources/{resource_id}/{action}", self.action),
            web.post("/dashboard/deadletters/replay", self.replay),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
        ]

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        body = package_files.files("calsync.web").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=_STATIC[name])

    def _csrf(self, request: web.Request) -> str:
        session = request.get(SESSION_KEY)
        return session.csrf_token if isinstance(session, Session) else ""

    def _frame(self, request: web.Request, title: str, body: str, *, poll: str) -> web.Response:
        admin = role_of(request) is Role.ADMIN
        who = "admin" if admin else "read-only"
        logout = ""
        if isinstance(request.get(SESSION_KEY), Session):
            logout = (
                '<form method="post" action="/logout" class="inline">'
                f'<input type="hidden" name="{CSRF_FIELD}" value="{_e(self._csrf(request))}">'
                '<button type="submit">Sign out</button></form>'
            )
        page = _PAGE.format(
            title=_e(title),
            app_id=_e(self._app_id),
            who=who,
            logout=logout,
            body=body,
            poll=_e(poll),
            admin="1" if admin else "0",
            csrf=_e(self._csrf(request)),
        )
        return web.Response(text=page, content_type="text/html")

    async def _fleet_ready(self) -> None:
        try:
            await self._ready()
        except Exception:  # the page still renders (empty); the next poll tries again
            return

    async def page(self, request: web.Request) -> web.Response:
        await self._fleet_ready()
        now = self._clock()
        admin = role_of(request) is Role.ADMIN
        providers = sorted({v.provider for v in self.fleet.resources.values() if v.provider})
        options = "".join(f'<option value="{_e(p)}">{_e(p)}</option>' for p in providers)
        states = "".join(
            f'<option value="{_e(s)}">{_e(w)}</option>' for s, w in _STATE_WORDS.items()
        )
        replay = ""
        if admin:
            replay = (
                '<form method="post" action="/dashboard/deadletters/replay" class="inline action">'
                f'<input type="hidden" name="{CSRF_FIELD}" value="{_e(self._csrf(request))}">'
                '<button type="submit" id="replay">Replay dead letters</button></form>'
            )
        body = _INDEX.format(
            header=header_html(self.fleet.header(now)),
            rows=self._rows(now),
            providers=options,
            states=states,
            replay=replay,
        )
        return self._frame(request, "Resources", body, poll="/dashboard/api/fleet")

    def _rows(self, now: float) -> str:
        views = sorted(self.fleet.resources.values(), key=lambda v: v.resource_id)
        return "\n".join(resource_row(v, now) for v in views) or (
            '<tr class="empty"><td colspan="12">No resources yet.</td></tr>'
        )

    async def fleet_json(self, request: web.Request) -> web.Response:
        """The header figures and every resource, as JSON and as the page's fragments."""
        await self._fleet_ready()
        now = self._clock()
        figures = self.fleet.header(now)
        return web.json_response(
            {
                **figures,
                "resources": [
                    v.to_json(now)
                    for v in sorted(self.fleet.resources.values(), key=lambda v: v.resource_id)
                ],
                "html": {"header": header_html(figures), "rows": self._rows(now)},
            }
        )

    def _view(self, request: web.Request) -> ResourceView:
        view = self.fleet.resources.get(request.match_info["resource_id"])
        if view is None:
            raise web.HTTPNotFound(
                text='{"error": "no such resource on the status topic"}',
                content_type="application/json",
            )
        return view

    async def detail_page(self, request: web.Request) -> web.Response:
        await self._fleet_ready()
        view = self._view(request)
        now = self._clock()
        rid = quote(view.resource_id, safe="")
        actions = ""
        if role_of(request) is Role.ADMIN:
            buttons = "".join(
                f'<form method="post" action="/dashboard/resources/{_e(rid)}/{name}" '
                f'class="inline action"><input type="hidden" name="{CSRF_FIELD}" '
                f'value="{_e(self._csrf(request))}"><button type="submit" id="{name}"'
                f"{' class=danger' if name == 'remove' else ''}>{name.capitalize()}</button>"
                "</form>"
                for name in _ACTIONS
            )
            actions = f'<div class="actions">{buttons}</div>'
        body = (
            f'<p><a href="/dashboard/">← all resources</a></p><h1>{_e(view.resource_id)}</h1>'
            f'{actions}<p id="flash" role="status"></p>'
            f'<div id="detail">{detail_html(view, now)}</div>'
        )
        return self._frame(request, view.resource_id, body, poll=f"/dashboard/api/resources/{rid}")

    async def resource_json(self, request: web.Request) -> web.Response:
        await self._fleet_ready()
        view = self._view(request)
        now = self._clock()
        return web.json_response(
            {
                **view.to_json(now, detail=True),
                "version": self.fleet.version,
                "html": {"detail": detail_html(view, now)},
            }
        )

    def _done(self, request: web.Request, message: str, back: str) -> web.Response:
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response({"status": "accepted", "message": message}, status=202)
        raise web.HTTPSeeOther(back)

    async def action(self, request: web.Request) -> web.Response:
        """Admin only (the middleware refuses the read role and a missing CSRF token)."""
        rid = request.match_info["resource_id"]
        kind = _ACTIONS.get(request.match_info["action"])
        if kind is None:
            raise web.HTTPNotFound()
        try:
            await self._send(kind, rid)
        except Exception as exc:
            status = getattr(exc, "status", 503)
            message = getattr(exc, "message", "the broker did not acknowledge the command")
            return web.json_response({"error": message}, status=status)
        return self._done(
            request,
            f"{kind.value} of {rid} requested",
            f"/dashboard/resources/{quote(rid, safe='')}",
        )

    async def replay(self, request: web.Request) -> web.Response:
        try:
            replayed = await self._replay()
        except Exception:
            return web.json_response(
                {"error": "the dead-letter topic cannot be read now"}, status=503
            )
        return self._done(request, f"replayed {replayed} dead letter(s)", "/dashboard/")

    async def login(self, request: web.Request) -> web.Response:
        """A token from the form → a session cookie (303 to ``next``); else 401 and the form."""
        form = await request.post()
        token = form.get("token")
        next_path = form.get("next")
        target = next_path if isinstance(next_path, str) and _local(next_path) else "/dashboard/"
        role = self._signer.role_of_token(token) if isinstance(token, str) else None
        if role is None:
            return web.Response(
                text=login_page(next_path=target, error="That token is not valid."),
                status=401,
                content_type="text/html",
                headers={"WWW-Authenticate": "Bearer"},
            )
        cookie, _ = self._signer.open(role)
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            httponly=True,
            samesite="Strict",
            secure=self._secure,
            path="/",
        )
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/dashboard/")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response


def _local(path: str) -> bool:
    """Only same-site paths after login: no ``//host`` or ``https://...``."""
    return path.startswith("/") and not path.startswith("//") and "\\" not in path


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · calsync</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
<script src="/dashboard/static/dashboard.js" defer></script></head>
<body data-poll="{poll}" data-admin="{admin}" data-csrf="{csrf}">
<header class="top"><a href="/dashboard/" class="brand">calsync</a>
<span class="muted">{app_id} · {who}</span> <span id="live" class="muted"></span>{logout}</header>
<main>{body}</main></body></html>
"""

_INDEX = """<section id="header">{header}</section>
<section class="controls">
<label>Provider <select id="f-provider"><option value="">all</option>{providers}</select></label>
<label>State <select id="f-state"><option value="">all</option>{states}</select></label>
<label><input type="checkbox" id="f-problems"> only problems</label>
<label>Search <input type="search" id="f-text" placeholder="resource or calendar"></label>
{replay}<span id="flash" role="status"></span></section>
<table id="resources"><thead><tr>
<th data-sort="id" aria-sort="ascending">Resource</th><th data-sort="provider">Provider</th>
<th>Calendar</th><th data-sort="state">State</th><th data-sort="age">Last sync</th>
<th data-sort="lag">Lag</th><th>Push</th><th>Credentials</th>
<th data-sort="retries">Retries</th><th>Quarantined</th><th>Last error</th><th>Worker</th>
</tr></thead><tbody id="rows">
{rows}
</tbody></table>
"""
