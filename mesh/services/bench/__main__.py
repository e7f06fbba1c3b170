"""``python -m mesh.services.bench <role>``: one of the bench's helper servers."""

import sys

from mesh.services.bench.roles import role_main

role_main(sys.argv[1:])
