"""Simulated InfiniBand fabric (ibsim + OpenSM) for end-to-end tests and benches.

Typical use::

    topo = fat_tree(8)
    async with SimFabric(topo, tmp_path) as fabric:
        fabric.partitions_conf.write_text(...)
        await fabric.sighup()
        await wait_for_pkeys(fabric, lambda t: ..., topo.hca_port_guids()[:2])
"""

from pkeyd.sim.fabric import SimError, SimFabric, find_umad2sim, sim_processes
from pkeyd.sim.pkeys import pkey_membership, read_pkey_tables, wait_for_pkeys
from pkeyd.sim.topology import SimNode, Topology, fat_tree

__all__ = [
    "SimError",
    "SimFabric",
    "SimNode",
    "Topology",
    "fat_tree",
    "find_umad2sim",
    "pkey_membership",
    "read_pkey_tables",
    "sim_processes",
    "wait_for_pkeys",
]
