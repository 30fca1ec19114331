"""What cluster processes say to each other: the internal worker protocol (gateway ->
worker) and tokens. Shared by the worker, the gateway's remote engine client and the
controller; imports only ``corral.core``."""
