"""Training of the dense and decoupled ResNets (`dnd train`)."""
