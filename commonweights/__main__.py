from __future__ import annotations

from commonweights.cli import main

raise SystemExit(main())
