"""The operator console (``mesh console``): the fleet, its rollouts, the review queue and ground
truth in a browser, live over server-sent events fed from NATS.

Pure parts (no transport): ``markup`` (escaped HTML), ``access`` (people's tokens, sessions,
CSRF), ``fleetboard`` (nodes and sites from heartbeats), ``rolloutboard`` (stages and gates),
``quality`` and ``charts`` (ground truth as inline SVG), ``figure`` (an item's input as a person
reads it), ``actions`` (the log of who did what), the ``page_*`` renderers. Adapters:
``feeds`` (NATS in), ``operations`` (NATS out: rollout actions, labels), ``web`` (aiohttp).
"""
