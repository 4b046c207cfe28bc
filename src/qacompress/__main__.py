"""`python -m qacompress` is the same as the `qacompress` command."""

from qacompress.cli import main

raise SystemExit(main())
