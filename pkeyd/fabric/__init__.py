"""PKey-table readers: SMPs over libibumad for the whole fabric, verbs for local HCAs.

Both return ``FabricPort`` values of the same shape (GUIDs, LID, state,
PartitionCap, the raw PKey table), so callers treat them alike.
"""

from pkeyd.fabric.engine import MadTransport, SmpReaderConfig
from pkeyd.fabric.model import (
    FabricError,
    FabricPort,
    FabricSnapshot,
    MadStats,
    MadStatusError,
    MadTimeoutError,
    NodeType,
    PortNotFoundError,
    PortState,
    ReadFailure,
)
from pkeyd.fabric.reader import SmpFabricReader

__all__ = [
    "FabricError",
    "FabricPort",
    "FabricSnapshot",
    "MadStats",
    "MadStatusError",
    "MadTimeoutError",
    "MadTransport",
    "NodeType",
    "PortNotFoundError",
    "PortState",
    "ReadFailure",
    "SmpFabricReader",
    "SmpReaderConfig",
]
