"""`python -m gradmix_tune`: the same as the `gradmix-tune` command."""
from .cli import main

raise SystemExit(main())
