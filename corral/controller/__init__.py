"""The control plane: desired state (model specs, replicas) and its reconciliation."""
