"""``python -m modprompt``: the ``modprompt`` command."""

from modprompt.cli import main

raise SystemExit(main())
