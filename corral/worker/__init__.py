"""Workers host model instances: they create engines from specs, start them, and keep
their instances registered."""
