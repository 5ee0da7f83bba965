"""The data plane: chunk store, manifests, blob transfer, job inputs and outputs."""
