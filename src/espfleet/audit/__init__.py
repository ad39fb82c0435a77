"""espfleet.audit."""
