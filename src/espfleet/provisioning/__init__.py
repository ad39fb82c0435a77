"""espfleet.provisioning."""
