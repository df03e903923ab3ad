"""Provider adapters: the only code that sees a provider's raw data."""
