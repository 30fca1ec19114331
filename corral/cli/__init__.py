"""The ``corral`` command line. Subcommands import their dependencies lazily so that
``corral --help`` stays fast and works without any engine installed."""
