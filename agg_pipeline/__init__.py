"""agg_pipeline: derived market bars (5m, 1h, optional 15m/4h/1d) from 1m bars in PostgreSQL."""

__version__ = "0.1.0"
