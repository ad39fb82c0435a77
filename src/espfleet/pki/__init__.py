"""espfleet.pki."""
