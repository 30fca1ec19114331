"""Plain-text formatting shared by the CLI and the reports (tables, durations)."""
