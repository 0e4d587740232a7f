"""`python -m dream_policy` runs the `dream-policy` console script."""

from dream_policy.cli import main

raise SystemExit(main())
