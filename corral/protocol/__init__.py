"""Wire types of the service protocols Corral speaks. The lowest layer: imports nothing
from the rest of Corral."""
