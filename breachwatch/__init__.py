"""breachwatch: need-to-know monitoring of personal-data access logs, breach incidents and
the legal notification clock that follows them."""

__version__ = "0.1.0"
