"""The fault suite (``make chaos``): faults injected into real parts under a steady load."""
