"""pkeyd: an InfiniBand partition controller over OpenSM's partitions.conf."""

__version__ = "0.1.0"
