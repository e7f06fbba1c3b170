"""Request parameters the mesh itself reads or writes (``InferRequest.parameters``), beside the
caller's own: names on the wire like subjects and headers.

A parameter travels with a request up the chain, so a tier above knows what the entry tier
learnt: who asked (the caller's identity, for the labels it may read later), whether the caller
wants a person to look (``human_review``) and what the tiers below answered.
"""

from __future__ import annotations

#: ``auto`` (the review queue's rules decide), ``always`` or ``never``: whether a person sees
#: the case (SDK ``human_review=``, the OIP ingress's parameter, an event's field).
HUMAN_REVIEW = "mesh_human_review"
#: the identity the entry tier answered (its reply inbox's, or an event's source): whom a
#: label of the case is told to. Set by the entry tier; a client's own value is replaced.
CALLER = "mesh_caller"
#: what the tiers below answered, added by each tier that escalates (a compact JSON list).
ANSWERS = "mesh_answers"
