"""espfleet.backend."""
