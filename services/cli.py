"""``python -m services.cli`` from a source checkout: the ``mesh`` command of :mod:`mesh.cli`."""

from mesh.cli import main

if __name__ == "__main__":
    main(prog_name="mesh")
