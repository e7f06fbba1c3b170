"""Development rigs: real nats-server processes, the process supervisor and launcher, the TCP
fault proxy, and the builder of typed node settings for a local mesh.

Used by the tests, ``mesh up``, the demo and the bench; never imported by a production entry
point (``tests/unit/test_layering.py`` checks it), the way nats.py keeps its test server in a
package of its own.
"""
