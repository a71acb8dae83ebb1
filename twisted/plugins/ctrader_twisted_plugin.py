"""twistd plugins of ctrader-twisted (ServiceMaker instances only)."""

from twisted.application.service import ServiceMaker

ctrader_sandbox = ServiceMaker(
    "ctrader-twisted sandbox",
    "ctrader_twisted.sandbox.tap",
    "A local cTrader Open API 2.0 server (TLS, in-memory state, seeded prices)",
    "ctrader-sandbox",
)

ctrader_record = ServiceMaker(
    "ctrader-twisted recorder",
    "ctrader_twisted.recorder.tap",
    "Record spots, closed trendbars and depth into SQLite or PostgreSQL",
    "ctrader-record",
)
