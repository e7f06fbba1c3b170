"""The console's HTTP side (aiohttp): pages, their live streams, a JSON API and the actions,
every one behind a person's credential; only the static files are public.

A page is server-rendered HTML; its live parts come again over server-sent events
(``/events?page=...``) whenever the state behind them changes, as HTML fragments the page's
script swaps in, so nothing reloads. Every response says not to be framed, cached or sniffed and
runs no script but the console's own (Content-Security-Policy)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from importlib import resources
from typing import Any

from aiohttp import web

from mesh.console.access import COOKIE, SESSION_S, Access, Session, bearer_token, same_origin
from mesh.console.layout import page, refusal
from mesh.console.markup import Html, escape
from mesh.console.operations import Operations
from mesh.console.page_review import item_fragment
from mesh.console.page_rollouts import VERBS, confirm_body
from mesh.console.state import ConsoleState
from mesh.console.views import PAGES, cards, fleet_json, fragments
from mesh.errors import HTTP_STATUS, MeshError
from mesh.fleet.admin import summary
from mesh.review.api import ReviewApi
from mesh.topology.subjects import check_token

log = logging.getLogger("mesh.console")

PERSON = web.RequestKey("person", str)
SESSION = web.RequestKey("session", Session)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: seconds between two sends of one stream, and of a keep-alive comment when nothing changes.
STREAM_MIN_S = 0.5
KEEPALIVE_S = 15.0
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # "no-referrer" would make a browser send "Origin: null" with a form, which the CSRF
    # check refuses; the token in a first address never leaves the console either way
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}


class ConsoleWeb:
    def __init__(
        self,
        state: ConsoleState,
        access: Access,
        operations: Operations,
        *,
        desk: ReviewApi | None,
        backfill: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.state = state
        self.access = access
        self.ops = operations
        self.desk = desk
        self._backfill = backfill
        self._closing = asyncio.Event()
        self._flash: dict[str, str] = {}
        self._static = {
            name: resources.files("mesh.console").joinpath("static", name).read_bytes()
            for name in STATIC
        }

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate], client_max_size=64 * 1024)
        app.on_response_prepare.append(_secure_headers)
        r = app.router
        r.add_get("/static/{name}", self._asset)
        r.add_get("/", self._fleet)
        r.add_get("/nodes/{name}", self._node)
        r.add_get("/rollouts", self._rollouts)
        r.add_get("/rollouts/{model}/{action}", self._confirm)
        r.add_post("/rollouts/{model}/{action}", self._rollout_action)
        r.add_get("/review", self._review)
        r.add_post("/review/{item}/{op}", self._review_action)
        r.add_get("/quality", self._quality)
        r.add_get("/events", self._events)
        r.add_get("/api/fleet", self._api_fleet)
        r.add_get("/api/rollouts", self._api_rollouts)
        r.add_get("/api/review", self._api_review)
        r.add_get("/api/quality", self._api_quality)
        r.add_get("/api/actions", self._api_actions)
        r.add_post("/api/rollouts/{model}/{action}", self._api_rollout_action)
        r.add_post("/api/review/{item}/{op}", self._api_review_action)
        return app

    def close(self) -> None:
        """Ends every open stream (the server is stopping)."""
        self._closing.set()
        self.state.changed()

    # --- access -----------------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/static/"):
            return await handler(request)
        kind = _kind(request.path)
        bearer = bearer_token(request.headers.get("Authorization"))
        session: Session | None = None
        cookie: str | None = None
        given = bearer is not None
        if bearer is not None:
            person = self.access.person_for_token(bearer)
        else:
            session = self.access.session_for_cookie(request.cookies.get(COOKIE))
            person = session.person if session is not None else None
            if person is None and kind == "page" and request.method == "GET":
                query = request.query.get("token")
                given = query is not None
                person = self.access.person_for_token(query)
                if person is not None:
                    session, cookie = self.access.open_session(person)
        if person is None:
            return _refused(kind, "that token is not valid" if given else "a token is needed")
        if request.method == "POST" and bearer is None:
            assert session is not None
            form = await request.post() if request.content_type.endswith("form-urlencoded") else {}
            token = request.headers.get("X-CSRF-Token") or form.get("csrf")
            origin_ok = same_origin(request.headers.get("Origin"), request.host, request.scheme)
            if not origin_ok or not self.access.csrf_ok(session, str(token or "")):
                log.warning("refused a cross-site or token-less action by %s", person)
                return _refused(kind, "this action did not come from a console page", 403)
        request[PERSON] = person
        if session is not None:
            request[SESSION] = session
        response = await handler(request)
        if cookie is not None:
            response.set_cookie(
                COOKIE, cookie, httponly=True, samesite="Strict", path="/",
                max_age=int(SESSION_S), secure=request.secure,
            )  # fmt: skip
        return response

    def _csrf(self, request: web.Request) -> str:
        session = request.get(SESSION)
        return self.access.csrf_token(session) if isinstance(session, Session) else ""

    def _take_flash(self, request: web.Request) -> str | None:
        session = request.get(SESSION)
        return self._flash.pop(session.nonce, None) if isinstance(session, Session) else None

    def _set_flash(self, request: web.Request, text: str) -> None:
        session = request.get(SESSION)
        if isinstance(session, Session):
            self._flash[session.nonce] = text
            while len(self._flash) > 1000:
                self._flash.pop(next(iter(self._flash)))

    # --- pages ------------------------------------------------------------------------------

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], content_type=STATIC[name])

    def _page(
        self, request: web.Request, title: str, active: str, body: Html, stream: str | None
    ) -> web.Response:
        text = page(
            title=title, active=active, body=body, csrf=self._csrf(request), stream=stream,
            flash=self._take_flash(request),
        )  # fmt: skip
        return web.Response(text=text, content_type="text/html")

    def _live(self, page_name: str, **keys: str | None) -> Html:
        parts = fragments(self.state, page_name, **keys)
        return Html("".join(f'<div id="{k}">{v}</div>' for k, v in parts.items()))

    async def _fleet(self, request: web.Request) -> web.Response:
        return self._page(request, "Fleet", "fleet", self._live("fleet"), "/events?page=fleet")

    async def _node(self, request: web.Request) -> web.Response:
        name = _token(request.match_info["name"], "node name")
        if self._backfill is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    await self._backfill(name)
        body = Html('<p><a href="/">Back to the fleet</a></p>' + self._live("node", node=name))
        return self._page(request, f"Node {name}", "fleet", body, f"/events?page=node&node={name}")

    async def _rollouts(self, request: web.Request) -> web.Response:
        return self._page(
            request, "Rollouts", "rollouts", self._live("rollouts"), "/events?page=rollouts"
        )

    async def _confirm(self, request: web.Request) -> web.Response:
        model = _token(request.match_info["model"], "model name")
        action = request.match_info["action"]
        if action not in VERBS:
            raise web.HTTPNotFound()
        rollout = self.state.rollouts.get(model)
        if rollout is None:
            raise web.HTTPNotFound(text=f"no rollout of {model}")
        what = (
            f"{VERBS[action]} the rollout of {model}@{rollout.version} (from "
            f"{rollout.previous_version}, now {rollout.state.value}, stage "
            f"{rollout.current_stage + 1} of {len(rollout.stages)})?"
        )
        body = confirm_body(model, action, what, self._csrf(request))
        return self._page(request, f"{VERBS[action]} a rollout", "rollouts", body, None)

    async def _rollout_action(self, request: web.Request) -> web.Response:
        model, action = request.match_info["model"], request.match_info["action"]
        try:
            text = await self.ops.rollout(request[PERSON], model, action)
        except MeshError as exc:
            text = f"not done: {exc.message}"
        self._set_flash(request, text)
        raise web.HTTPSeeOther("/rollouts")

    async def _review(self, request: web.Request) -> web.Response:
        wanted = request.query.get("item")
        item, note = await self._item(wanted)
        current = str(item.get("id")) if item else None
        panel = item_fragment(item, self._csrf(request), self.ops.can_label, note)
        body = Html(
            '<div class="review-layout">'
            f'<section id="review-item" aria-label="Item to label">{panel}</section>'
            '<section aria-labelledby="queue-heading"><h2 id="queue-heading">Queue</h2>'
            + self._live("review", item=current)
            + "</section></div>"
        )
        return self._page(request, "Review", "review", body, "/events?page=review")

    async def _item(
        self, wanted: str | None, skip: str | None = None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The item to show: the one asked for, else the oldest pending one."""
        if self.desk is None:
            return None, self.state.queue.problem
        candidates = [wanted] if wanted else [
            str(i.get("id")) for i in self.state.queue.items if i.get("id") != skip
        ][:5]  # fmt: skip
        for item_id in candidates:
            try:
                return await self.desk.show(_token(item_id, "review item id")), None
            except MeshError as exc:
                if wanted:
                    return None, exc.message
        return None, None

    async def _review_action(self, request: web.Request) -> web.StreamResponse:
        item, op = request.match_info["item"], request.match_info["op"]
        form = await request.post()
        status, message = 200, ""
        try:
            if op == "label":
                await self.ops.label(request[PERSON], item, str(form.get("label", "")))
                message = f"labelled {item[:12]} as {form.get('label')!s}"
            elif op == "skip":
                await self.ops.skip(request[PERSON], item)
                message = f"skipped {item[:12]}"
            else:
                raise web.HTTPNotFound()
        except MeshError as exc:
            status, message = HTTP_STATUS[exc.code], f"not done: {exc.message}"
        if "application/json" in request.headers.get("Accept", ""):
            shown, _ = (await self._item(None, skip=item)) if status == 200 else (
                await self._item(item))  # fmt: skip
            html = item_fragment(shown, self._csrf(request), self.ops.can_label, message)
            return web.json_response({"message": message, "html": html}, status=status)
        self._set_flash(request, message)
        raise web.HTTPSeeOther("/review")

    async def _quality(self, request: web.Request) -> web.Response:
        return self._page(
            request, "Quality", "quality", self._live("quality"), "/events?page=quality"
        )

    # --- the live stream --------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        page_name = request.query.get("page", "")
        node = request.query.get("node")
        if page_name not in PAGES or (page_name == "node" and not node):
            raise web.HTTPBadRequest(text=f"page is one of {', '.join(PAGES)}")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent: dict[str, str] = {}
        try:
            while not self._closing.is_set():
                for key, html in fragments(self.state, page_name, node=node).items():
                    if sent.get(key) != html:
                        data = json.dumps({"id": key, "html": html})
                        await response.write(f"event: fragment\ndata: {data}\n\n".encode())
                        sent[key] = html
                await asyncio.sleep(STREAM_MIN_S)
                if not await self.state.wait_changed(KEEPALIVE_S):
                    await response.write(b": still here\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    # --- the JSON API -----------------------------------------------------------------------

    async def _api_fleet(self, request: web.Request) -> web.Response:
        return web.json_response(fleet_json(self.state))

    async def _api_rollouts(self, request: web.Request) -> web.Response:
        out = []
        for c in cards(self.state):
            record = summary(c.rollout)
            record["gates_now"] = [asdict(g) for g in c.gates]
            record["verdict_now"] = c.verdict
            out.append(record)
        return web.json_response(out)

    async def _api_review(self, request: web.Request) -> web.Response:
        q = self.state.queue
        return web.json_response({"items": q.items, "total": q.total, "problem": q.problem})

    async def _api_quality(self, request: web.Request) -> web.Response:
        board = self.state.quality
        return web.json_response(
            {
                "versions": [asdict(v) for v in board.versions],
                "days": board.days,
                "queue": board.queue,
                "problem": self.state.quality_problem,
            }
        )

    async def _api_actions(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(a) for a in self.state.actions.recent(200)])

    async def _api_rollout_action(self, request: web.Request) -> web.Response:
        model, action = request.match_info["model"], request.match_info["action"]
        try:
            text = await self.ops.rollout(request[PERSON], model, action)
        except MeshError as exc:
            return _error(exc)
        return web.json_response({"result": text})

    async def _api_review_action(self, request: web.Request) -> web.Response:
        item, op = request.match_info["item"], request.match_info["op"]
        body = await _json_body(request)
        try:
            if op == "label":
                answer = await self.ops.label(request[PERSON], item, str(body.get("label", "")))
            elif op == "skip":
                answer = await self.ops.skip(request[PERSON], item)
            else:
                raise web.HTTPNotFound()
        except MeshError as exc:
            return _error(exc)
        return web.json_response({"result": answer})


async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    for key, value in HEADERS.items():
        response.headers.setdefault(key, value)


def _kind(path: str) -> str:
    if path.startswith("/api/"):
        return "api"
    if path == "/events":
        return "stream"
    return "page"


def _refused(kind: str, message: str, status: int = 401) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="mesh console"'} if status == 401 else {}
    if kind == "api":
        code = "UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED"
        return web.json_response(
            {"error": {"code": code, "message": message}}, status=status, headers=headers
        )
    if kind == "stream":
        return web.Response(text=message, status=status, headers=headers)
    return web.Response(
        text=refusal(message), status=status, content_type="text/html", headers=headers
    )


def _error(exc: MeshError) -> web.Response:
    return web.json_response(
        {"error": {"code": exc.code.value, "message": exc.message}}, status=HTTP_STATUS[exc.code]
    )


def _token(value: str, what: str) -> str:
    try:
        return check_token(value, what)
    except ValueError:
        raise web.HTTPNotFound(text=f"no such {what}: {escape(value[:40])}") from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


__all__ = ["ConsoleWeb"]
