-- Derived bars (seed 004, B.2): every timeframe from 5m up. Soft delete keeps history.
CREATE TABLE IF NOT EXISTS derived_data_bars (
    id                 bigserial,
    canonical_symbol   text NOT NULL,
    timeframe          text NOT NULL,
    ts_utc             timestamptz NOT NULL,
    open               double precision NOT NULL,
    high               double precision NOT NULL,
    low                double precision NOT NULL,
    close              double precision NOT NULL,
    vol                double precision,
    vwap               double precision,
    trade_count        integer,
    is_partial         boolean NOT NULL,
    source             text NOT NULL,
    ingested_at        timestamptz NOT NULL,
    source_timeframe   text,
    source_candles     integer,
    expected_candles   integer,
    quality_score      integer,
    derivation_version integer,
    deleted_at         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    raw                jsonb NOT NULL,
    CONSTRAINT derived_data_bars_pkey PRIMARY KEY (id),
    CONSTRAINT derived_canonical_symbol_fkey FOREIGN KEY (canonical_symbol)
        REFERENCES core_asset_registry_all (canonical_symbol)
);

-- At most one active bar per (symbol, timeframe, ts_utc); soft-deleted history is free.
CREATE UNIQUE INDEX IF NOT EXISTS derived_unique_symbol_tf_ts
    ON derived_data_bars (canonical_symbol, timeframe, ts_utc) WHERE deleted_at IS NULL;

CREATE INDEX IF NOT EXISTS derived_data_bars_symbol_tf_ts_desc_idx
    ON derived_data_bars (canonical_symbol, timeframe, ts_utc DESC);
