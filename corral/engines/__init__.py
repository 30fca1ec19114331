"""Engine adapters. Importing this package imports no engine library: heavy imports
happen only when an engine is instantiated (see ``catalog``)."""
