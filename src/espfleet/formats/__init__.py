"""espfleet.formats."""
