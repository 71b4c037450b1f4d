"""`python -m raygram.cli ...`: the same as the `raygram` command."""
from raygram.cli.main import main

raise SystemExit(main())
