"""Development and demonstration: the TCP fault proxy, raw protocol clients, the simulated fleet,
the demo's models (and a deliberately faulty one), ``mesh demo`` and ``mesh bench``.

Never imported by a production module (``tests/unit/test_layering.py`` checks it), the way
nats.py keeps its test server in a package of its own.
"""
