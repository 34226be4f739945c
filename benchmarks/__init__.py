"""Every `commonweights bench …`: measurements of the product, written to docs/benchmarks.md.

Beside the product, not in it: benchmarks may use every layer (they start coordinators and
volunteers as processes), and nothing in protocol/, training/, coordinator/ or volunteer_app/
imports them.
"""

from __future__ import annotations
