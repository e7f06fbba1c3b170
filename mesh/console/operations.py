"""What the console does for a person, only through the NATS APIs that already enforce who may
do what: a rollout's pause, resume and abort are the compare-and-set writes ``mesh rollout
pause`` makes (the console's identity may write rollout records and nothing else of the fleet),
and labels and skips go through the review API as the console's reviewer identity. Each action
is logged with who and when, whatever its outcome."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

from nats.aio.client import Client as NATS

from mesh.console.actions import ActionRecord
from mesh.console.rolloutboard import ACTIONS
from mesh.console.state import ConsoleState
from mesh.errors import InvalidArgumentError, MeshError, UnavailableError
from mesh.fleet.admin import act
from mesh.review.api import ReviewApi
from mesh.topology.subjects import check_token

log = logging.getLogger("mesh.console.actions")


class Operations:
    def __init__(
        self, nc: NATS, state: ConsoleState, *, domain: str, reviewer: ReviewApi | None
    ) -> None:
        self._js = nc.jetstream(domain=domain)
        self.state = state
        self.reviewer = reviewer

    @property
    def can_label(self) -> bool:
        return self.reviewer is not None

    async def rollout(self, person: str, model: str, action: str) -> str:
        """Pause, resume or abort the rollout of ``model``; what happened, in words."""
        target = model[:64]
        with self._refused(person, f"rollout.{action}", target):
            if action not in ACTIONS:
                raise InvalidArgumentError(
                    f"a rollout is paused, resumed or aborted, not {action!r}"
                )
            check_token(model, "model name")
            changed = await act(self._js, model, action, by=f"{person} (console)")
        self._record(person, f"rollout.{action}", target, "done", changed.state.value)
        return f"rollout {changed.id} of {changed.model}@{changed.version}: {changed.state.value}"

    async def label(self, person: str, item: str, label: str) -> dict[str, Any]:
        return await self._review(person, "label", item, label)

    async def skip(self, person: str, item: str) -> dict[str, Any]:
        return await self._review(person, "skip", item, None)

    async def _review(self, person: str, op: str, item: str, label: str | None) -> dict[str, Any]:
        target = item[:64]
        with self._refused(person, f"review.{op}", target):
            if self.reviewer is None:
                raise UnavailableError(
                    "this console has no reviewer identity (start it with --reviewer-creds)"
                )
            check_token(item, "review item id")
            if op == "label":
                assert label is not None
                value: int | str = int(label) if label.strip().isdigit() else label
                answer = await self.reviewer.label(item, value)
            else:
                answer = await self.reviewer.skip(item)
        given = answer.get("label") if isinstance(answer.get("label"), dict) else {}
        detail = f"label {given.get('label')}" if op == "label" and given else ""
        self._record(person, f"review.{op}", target, "done", detail)
        self.state.queue.items = [i for i in self.state.queue.items if i.get("id") != item]
        self.state.changed()
        return answer

    @contextlib.contextmanager
    def _refused(self, person: str, action: str, target: str) -> Iterator[None]:
        """An action refused is recorded so, and raised as one of the mesh's typed errors."""
        try:
            yield
        except ValueError as exc:
            self._record(person, action, target, f"refused: {exc}")
            raise InvalidArgumentError(str(exc)) from None
        except MeshError as exc:
            self._record(person, action, target, f"refused: {exc.message}")
            raise

    def _record(
        self, person: str, action: str, target: str, outcome: str, detail: str = ""
    ) -> None:
        record = ActionRecord(
            at=self.state.clock(), person=person, action=action, target=target,
            outcome=outcome, detail=detail,
        )  # fmt: skip
        self.state.actions.add(record)
        log.info(
            "%s by %s on %s: %s", action, person, target, outcome,
            extra={"fields": dataclasses.asdict(record)},
        )  # fmt: skip
        self.state.changed()


__all__ = ["Operations"]
