"""What a node answered for the tier below: escalations and audits, per caller and model.

The fleet judges a rollout on what nodes say they compared with the tier above. A node's own
counters are only its word; these counts are the tier above's: the node that answered an
escalation or an audit counts it for the identity whose inbox the answer went to (the only one
that can read it, ``mesh.node.admission.caller_of``), and reports the totals in its heartbeat
(``wire.AnsweredFor``). A caller may claim to have compared at most what was answered for it.

Counting is one dict increment per answer. Callers are bounded: past ``MAX_ANSWERED_CALLERS``
(caller, model) pairs, answers for new ones count under ``UNKNOWN_CALLER``, so a flood of
made-up reply subjects cannot grow it. Pure: no I/O.
"""

from __future__ import annotations

import time

from mesh.node.admission import UNKNOWN_CALLER
from mesh.wire import MAX_ANSWERED_CALLERS, AnsweredFor

INBOX_HEAD = "_INBOX_"


class AnswerLedger:
    """Answers given to the tier below since ``since``, by (caller, model)."""

    __slots__ = ("_counts", "_max", "since")

    def __init__(self, since: float | None = None, max_pairs: int = MAX_ANSWERED_CALLERS) -> None:
        self.since = time.time() if since is None else since
        self._counts: dict[tuple[str, str], int] = {}
        self._max = max_pairs

    def count(self, reply: str, model: str) -> None:
        """One answer to a request whose reply subject is ``reply``."""
        key = (reply.partition(".")[0], model)
        counts = self._counts
        held = counts.get(key)
        if held is not None:
            counts[key] = held + 1
            return
        if not key[0].startswith(INBOX_HEAD) or len(counts) >= self._max:
            key = (UNKNOWN_CALLER, model)
        counts[key] = counts.get(key, 0) + 1

    def snapshot(self) -> AnsweredFor:
        by_caller: dict[str, dict[str, int]] = {}
        for (head, model), n in list(self._counts.items()):
            caller = head.removeprefix(INBOX_HEAD)
            by_caller.setdefault(caller, {})[model] = n
        return AnsweredFor(since=self.since, counts=by_caller)
