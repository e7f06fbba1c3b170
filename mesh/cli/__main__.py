"""``python -m mesh.cli``: the ``mesh`` command without its console script."""

from mesh.cli import main

main(prog_name="mesh")
