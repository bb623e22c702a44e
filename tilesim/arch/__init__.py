"""The hardware: one module per component, plus the chip that wires them."""
