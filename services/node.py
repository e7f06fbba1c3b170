"""``python -m services.node`` from a source checkout: the node process, ``mesh.services.node``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("mesh.services.node", run_name="__main__", alter_sys=True)
