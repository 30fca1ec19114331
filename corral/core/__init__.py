"""Core vocabulary and interfaces. Depends only on the standard library and pydantic-free dataclasses;
every other package (gateway, worker, controller, engines, cli) builds on this one."""
