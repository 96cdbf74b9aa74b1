"""Everything that touches OpenSM: rendering partitions.conf, writing it, reloading."""
