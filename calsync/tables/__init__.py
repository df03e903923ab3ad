"""Table values: resources, sync state and push channels, all keyed by resource id."""
