"""The market-data recorder: a service that stores spots, closed trendbars and depth.

Run it with ``twistd -n ctrader-record`` or ``ctrader-twisted record`` (see ``docs/recorder.md``).
"""

from __future__ import annotations
