"""`python -m bench.soaking`: what `bench/soak` and `make soak` run."""

import sys

from .main import main

sys.exit(main())
