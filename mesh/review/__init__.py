"""The review queue: what no tier is sure of reaches a person, and their labels become ground
truth (``docs/review.md``).

Pure: ``records`` (items, labels, what applications are told, traffic), ``sampling`` (what a
node offers and what the hub admits), ``ledger`` (the desk's view of the queue) and ``truth``
(accuracy, traffic, cost). Adapters: ``feed`` (a node offering candidates), ``intake`` and
``desk`` (the hub's service, ``mesh review serve``), ``client`` (the review API's caller).
"""
