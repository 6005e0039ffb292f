"""quantum-mesh: a coordinator that turns a libp2p mesh into one quantum-computing service."""

__version__ = "0.1.0"
