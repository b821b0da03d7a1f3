"""Adapters: the ports implemented for memory, files, Kafka and Redis."""
