"""espfleet.device."""
