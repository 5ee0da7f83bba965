"""The market: adverts, the peer table, the rules that match jobs to providers, reputation."""
