-- Whether a legacy clean-up names anything: the symbol in the registry (every derived bar's
-- symbol is, by foreign key), and any bar of it in that timeframe, active or withdrawn (a
-- clean-up run again finds only withdrawn ones: nothing to do, not a typo).
SELECT EXISTS (SELECT 1 FROM core_asset_registry_all
               WHERE canonical_symbol = %(symbol)s) AS symbol_known,
       EXISTS (SELECT 1 FROM derived_data_bars
               WHERE canonical_symbol = %(symbol)s AND timeframe = %(timeframe)s) AS bars_known
