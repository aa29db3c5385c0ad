"""The DynamoDB adapters of the connection lifecycle, under the name the load-test seeder imports.

The connections and partitions tables each have one adapter, in fanout.adapters (a synchronous and an
asynchronous flavour side by side, sharing request builders and error translation); this module names
the synchronous flavours for code outside the functions that has always imported them from here.
"""

from __future__ import annotations

from fanout.adapters.connections import ConnectionsTable
from fanout.adapters.errors import translate
from fanout.adapters.partitions import AppliedDeltas, PartitionsTable, StoredCounter

__all__ = ["AppliedDeltas", "ConnectionsTable", "PartitionsTable", "StoredCounter", "translate"]
