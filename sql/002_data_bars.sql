-- Source bars (seed 004, B.1): 1m only going forward.
CREATE TABLE IF NOT EXISTS data_bars (
    id               bigserial,
    canonical_symbol text NOT NULL,
    provider_ticker  text,
    timeframe        text NOT NULL,
    ts_utc           timestamptz NOT NULL,
    open             double precision,
    high             double precision,
    low              double precision,
    close            double precision,
    vol              double precision,
    vwap             double precision,
    trade_count      integer,
    is_partial       boolean NOT NULL,
    source           text NOT NULL,
    ingested_at      timestamptz NOT NULL,
    raw              jsonb NOT NULL,
    CONSTRAINT bars_pkey PRIMARY KEY (id),
    CONSTRAINT data_bars_symbol_tf_ts_unique UNIQUE (canonical_symbol, timeframe, ts_utc),
    CONSTRAINT bars_canonical_symbol_fkey FOREIGN KEY (canonical_symbol)
        REFERENCES core_asset_registry_all (canonical_symbol),
    CONSTRAINT bars_provider_ticker_required_chk
        CHECK (source <> 'massive_api' OR provider_ticker IS NOT NULL),
    CONSTRAINT bars_timeframe_check
        CHECK (timeframe = ANY (ARRAY['1m', '5m', '1h', '4h', '1d', '1w']))
);

-- Late-data detection asks "which rows landed since T?" across all symbols; the included
-- columns let it answer from the index alone.
CREATE INDEX IF NOT EXISTS data_bars_ingested_at_idx
    ON data_bars (ingested_at) INCLUDE (canonical_symbol, timeframe, ts_utc);
