"""Topic definitions and the records that travel on them."""
