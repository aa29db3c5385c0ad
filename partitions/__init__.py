"""Partitions: choice on connect, stream-fed counters, reconciliation (pure core + DynamoDB adapter)."""
