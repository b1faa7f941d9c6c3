"""`python -m bench.peers`: the runner is bench/peers/run.py (its docstring has the usage)."""

import sys

from bench.peers.run import main

sys.exit(main())
