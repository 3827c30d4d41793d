"""`python -m wiber` is the `wiber` command."""
from wiber.cli import main

raise SystemExit(main())
