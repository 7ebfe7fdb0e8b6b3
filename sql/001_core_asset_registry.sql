-- Symbol registry (seed 004, part D). Created only when absent: on an existing platform
-- database the table is adopted as it is, and only our aggregation setting is added.
CREATE TABLE IF NOT EXISTS core_asset_registry_all (
    canonical_symbol        text PRIMARY KEY,
    provider_ticker         text,
    asset_class             text,
    source                  text,
    endpoint_key            text,
    query_params            jsonb,
    active                  boolean,
    notes                   text,
    test_active             boolean,
    ingest_class            text,
    base_timeframe          text,
    is_sparse               boolean,
    is_contract             boolean,
    contract_root           text,
    contract_expiry_utc     timestamptz,
    expected_update_seconds integer,
    calc_15m                boolean,
    calc_4h                 boolean,
    calc_1d                 boolean,
    created_at              timestamptz DEFAULT now(),
    updated_at              timestamptz DEFAULT now()
);

-- Sources that pad no-trade minutes with zero-volume bars (open = high = low = close =
-- previous close; Binance does) leave those bars out of their own coarser open/high/low/close.
-- Off by default: FX sources carry no volume at all.
ALTER TABLE core_asset_registry_all
    ADD COLUMN IF NOT EXISTS agg_skip_zero_volume_ohlc boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN core_asset_registry_all.agg_skip_zero_volume_ohlc IS
    'When true, bars with vol = 0 are left out of derived open/high/low/close whenever the '
    'window holds a bar with vol > 0 (zero-volume filler minutes). Counts and volume are unaffected.';
