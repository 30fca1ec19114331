"""Registry implementations. ``embedded`` lives in process (standalone mode)."""
