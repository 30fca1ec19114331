"""The data plane: protocol front-ends, routing, and the one request pipeline."""
