"""``python -m mesh.dev.bench <role>``: one of the bench's helper servers."""

import sys

from mesh.dev.bench.roles import role_main

role_main(sys.argv[1:])
