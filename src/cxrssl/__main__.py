"""``python -m cxrssl``: the same as the ``cxrssl`` command."""

from cxrssl.cli.main import main

raise SystemExit(main())
